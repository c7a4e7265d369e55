-- Argo CD health of a kubemoe MoEModel (also used for MoAPipeline: both report the same conditions).
-- Order matters: a status of an older generation says nothing about the current spec; a failure the
-- operator cannot fix by waiting is Degraded even while scaled to zero; Ready is Healthy; scaled to zero is
-- Suspended; anything else is on its way (pods starting, rollout, models coming up).
local hs = {}

-- Ready=False reasons that waiting will not fix (the Planned condition's reasons arrive as NotPlanned).
local fatal = {
  NotPlanned = true, InvalidSpec = true, UnsupportedEngineVersion = true, LeaderWorkerSetMissing = true,
  Unschedulable = true, InsufficientMemory = true, ApplyFailed = true, ModelNotFound = true,
}
-- Degraded=True reasons that do not stop serving: a missing optional CRD only skips that child.
local benign = { OptionalAPIMissing = true, AsExpected = true }

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubemoe operator to reconcile this object"
  return hs
end
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubemoe operator to observe generation " .. generation ..
    " (status is of generation " .. status.observedGeneration .. ")"
  return hs
end

local ready = condition(status, "Ready")
local planned = condition(status, "Planned")
local degraded = condition(status, "Degraded")
-- Only while spec.routing asks for an HTTPRoute: False means a Gateway refused it or its backends do not
-- resolve (the model serves in the cluster, but not through the gateway the user asked for).
local route = condition(status, "RouteAccepted")

if planned ~= nil and planned.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(planned)
  return hs
end
if ready ~= nil and ready.status == "False" and fatal[ready.reason] then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end
if degraded ~= nil and degraded.status == "True" and not benign[degraded.reason] then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end
if route ~= nil and route.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(route)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = (ready.message ~= nil and ready.message ~= "") and ready.message or "Ready"
  if route ~= nil and route.status == "Unknown" then
    hs.message = hs.message .. "; route not confirmed by a gateway yet (" .. describe(route) .. ")"
  end
  return hs
end
if (obj.spec ~= nil and obj.spec.replicas == 0) or (ready ~= nil and ready.reason == "ScaledToZero") then
  hs.status = "Suspended"
  hs.message = "Scaled to zero replicas"
  return hs
end
hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for the Ready condition"
end
return hs
