-- Argo CD health of a Vigil Pipeline, from the status the operator writes:
-- Healthy when Ready; Suspended when paused; Progressing while the operator
-- has not seen the latest spec, provisions, or rolls the runners out;
-- Degraded with the failing condition's reason and message otherwise.
local hs = {}
local function condition(type_)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then return c end
  end
  return nil
end
local function describe(c)
  if c.message ~= nil and c.message ~= "" then return c.reason .. ": " .. c.message end
  return c.reason
end

if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
local ready = condition("Ready")
if obj.status.phase == "Paused" or (ready ~= nil and ready.status == "True" and ready.reason == "Paused") then
  hs.status = "Suspended"
  hs.message = "Paused: runners scaled to zero, topics and offsets kept"
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
-- Reasons of a Pipeline on its way up; any other reason for Ready=False is
-- a problem someone must look at.
local on_the_way = {Pending = true, RollingOut = true, RunnersNotReady = true}
if ready == nil or on_the_way[ready.reason] then
  hs.status = "Progressing"
  hs.message = ready ~= nil and describe(ready) or "Provisioning topics and runners"
  return hs
end
hs.status = "Degraded"
hs.message = describe(ready)
return hs
