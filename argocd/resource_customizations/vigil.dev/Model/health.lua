-- Argo CD health of a Vigil Model: Healthy when a version is served
-- (Ready); Progressing while the operator has not seen the latest spec or a
-- training Job runs with none served yet; Degraded when training failed,
-- with the reason (an earlier version may still be served: the message
-- says which).
local hs = {}
local function condition(type_)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then return c end
  end
  return nil
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
local trained = condition("Trained")
local ready = condition("Ready")
if obj.status.phase == "Failed" then
  hs.status = "Degraded"
  local why = "training failed"
  if trained ~= nil and trained.status == "False" then why = trained.reason .. ": " .. trained.message end
  if obj.status.servingVersion ~= nil then
    why = why .. " (still serving version " .. obj.status.servingVersion .. ")"
  end
  hs.message = why
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = "Serving version " .. (obj.status.servingVersion or "?")
  return hs
end
hs.status = "Progressing"
if obj.status.phase == "Training" then
  hs.message = "Training"
elseif ready ~= nil then
  hs.message = ready.reason .. ": " .. ready.message
else
  hs.message = "Waiting for the first version"
end
return hs
