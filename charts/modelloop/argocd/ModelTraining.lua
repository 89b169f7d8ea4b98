-- Argo CD health of a ModelTraining (modelloop.dev/v1alpha1), from the status the operator writes
-- (docs/api.md). Runs without Lua's string library, as Argo CD runs argocd-cm scripts.
local function condition(t)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == t then return c end
    end
  end
  return nil
end
local function describe(c)
  if c.message ~= nil and c.message ~= "" then return c.reason .. ": " .. c.message end
  return c.reason
end
local annotations = obj.metadata.annotations or {}
if annotations["modelloop.dev/reconcile"] == "disabled" then
  return {status = "Suspended", message = "reconciliation is paused (annotation modelloop.dev/reconcile: disabled)"}
end
local generation = obj.metadata.generation or 0
if obj.status == nil or obj.status.observedGeneration == nil then
  return {status = "Progressing", message = "waiting for the operator to reconcile"}
end
if obj.status.observedGeneration < generation then
  return {status = "Progressing", message = "waiting for the operator to observe generation " .. generation ..
    " (observed " .. obj.status.observedGeneration .. ")"}
end
local stalled, reconciling, ready, failed = condition("Stalled"), condition("Reconciling"), condition("Ready"), condition("Failed")
if stalled ~= nil and stalled.status == "True" then
  return {status = "Degraded", message = describe(stalled)}
end
if obj.spec.suspend == true and (reconciling == nil or reconciling.status ~= "True") then
  return {status = "Suspended", message = "spec.suspend is true: no new run starts"}
end
if reconciling ~= nil and reconciling.status == "True" then
  return {status = "Progressing", message = describe(reconciling)}
end
if failed ~= nil and failed.status == "True" then
  -- The most recent run failed; an older good version may still be the latest (Ready says which).
  if ready ~= nil and ready.status == "True" then
    return {status = "Degraded", message = describe(ready)}
  end
  return {status = "Degraded", message = describe(failed)}
end
if ready ~= nil and ready.status == "True" then
  return {status = "Healthy", message = describe(ready)}
end
if ready ~= nil then
  return {status = "Progressing", message = describe(ready)}
end
return {status = "Progressing", message = "waiting for the Ready condition"}
