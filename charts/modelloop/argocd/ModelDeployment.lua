-- Argo CD health of a ModelDeployment (modelloop.dev/v1alpha1), from the status the operator writes
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
local stalled, reconciling, ready = condition("Stalled"), condition("Reconciling"), condition("Ready")
if stalled ~= nil and stalled.status == "True" then
  return {status = "Degraded", message = describe(stalled)}
end
if reconciling ~= nil and reconciling.status == "True" then
  return {status = "Progressing", message = describe(reconciling)}
end
if ready ~= nil and ready.status == "True" then
  -- Serving, but the version it should serve failed its rollout and was rolled back, or was rejected on live
  -- traffic (by the challenger analysis, or by the watch after its promotion).
  local candidate = obj.status.candidateVersion
  if candidate ~= nil then
    for _, v in ipairs(obj.status.failedVersions or {}) do
      if v == candidate then
        return {status = "Degraded", message = "RolledBack: version " .. candidate ..
          " failed its rollout; serving version " .. (obj.status.modelVersion or "none")}
      end
    end
    local rollout = obj.status.rollout or {}
    for _, r in ipairs(rollout.rejected or {}) do
      if r.version == candidate then
        return {status = "Degraded", message = "ChallengerRejected: version " .. candidate ..
          " was rejected on live traffic; serving version " .. (obj.status.modelVersion or "none") .. ": " ..
          (r.message or "")}
      end
    end
  end
  return {status = "Healthy", message = describe(ready)}
end
if ready ~= nil then
  return {status = "Progressing", message = describe(ready)}
end
return {status = "Progressing", message = "waiting for the Ready condition"}
