-- Argo CD health check for trainforge.io/InferenceService.
-- Install as resource.customizations.health.trainforge.io_InferenceService in argocd-cm
-- (docs/gitops.md). Plain Lua 5.1 (Argo CD's interpreter); tests run it with lua5.4.
--   Progressing  the operator has not seen this generation yet, the model is not loaded yet
--                (e.g. waiting for the TrainingJob's first checkpoint), or replicas are starting
--   Healthy      Ready: the Deployment has the desired available replicas
--   Degraded     Stalled (invalid spec, missing PVC or TrainingJob); the message says why
local hs = { status = "Progressing", message = "Waiting for the trainforge operator" }

local function condition(status, type)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition(status, "Stalled")
local ready = condition(status, "Ready")
local loaded = condition(status, "ModelLoaded")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message or stalled.reason or "Stalled"
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
elseif loaded ~= nil and loaded.status ~= "True" then
  hs.message = "Model not loaded: " .. (loaded.message or loaded.reason or "")
elseif ready ~= nil then
  hs.message = "Not ready: " .. (ready.message or ready.reason or "")
end
return hs
