-- Argo CD health of a DriftMonitor (modelloop.dev/v1alpha1), from the status the operator writes
-- (docs/api.md). Runs without Lua's string library, as Argo CD runs argocd-cm scripts.
-- Drift itself is not ill health: a monitor that detects drift works (the message says so).
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
  return {status = "Progressing", message = "waiting for the first check"}
end
if obj.status.observedGeneration < generation then
  return {status = "Progressing", message = "waiting for a check of generation " .. generation ..
    " (observed " .. obj.status.observedGeneration .. ")"}
end
local ready, drift = condition("Ready"), condition("DriftDetected")
if ready ~= nil and ready.status == "True" then
  if drift ~= nil and drift.status == "True" then
    return {status = "Healthy", message = describe(drift)}
  end
  return {status = "Healthy", message = describe(ready)}
end
if ready ~= nil and ready.status == "False" then
  -- The check could not run (no deployment, no reference, no pod answered): nothing is decided.
  return {status = "Degraded", message = describe(ready)}
end
return {status = "Progressing", message = "waiting for the Ready condition"}
