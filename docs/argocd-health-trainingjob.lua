-- Argo CD health check for trainforge.io/TrainingJob.
-- Install as resource.customizations.health.trainforge.io_TrainingJob in argocd-cm
-- (docs/gitops.md). Plain Lua 5.1 (Argo CD's interpreter); tests run it with lua5.4.
--   Progressing  the operator has not seen this generation yet, or the job is pending,
--                running or restarting (a sync wave waits until training is over)
--   Suspended    spec.suspend is true
--   Healthy      all workers succeeded
--   Degraded     Failed (exit code, maxRestarts, deadline) or Stalled (invalid spec, missing
--                NetworkAttachmentDefinition or PVC); the message says what to change
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

local phase = status.phase or "Pending"
local failed = condition(status, "Failed")
local stalled = condition(status, "Stalled")
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = (failed and failed.message) or "TrainingJob failed"
elseif stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message or stalled.reason or "Stalled"
elseif phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "All workers succeeded"
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true"
else
  local current = condition(status, phase) or condition(status, "Running")
  hs.message = phase
  if current ~= nil and current.message ~= nil and current.message ~= "" then
    hs.message = phase .. ": " .. current.message
  end
end
return hs
