-- post.lua: wrk script: POST /tests with a test_id unique per request (run prefix from args,
-- thread number, counter), so every answer should be a 201. Args: run prefix [, token].
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

function init(args)
  prefix = (args[1] or "bench") .. "-" .. thread_no .. "-"
  counter = 0
  headers = { ["Content-Type"] = "application/json" }
  if args[2] then headers["Authorization"] = "Bearer " .. args[2] end  -- AUTH=on runs
end

function request()
  counter = counter + 1
  local id = prefix .. counter
  local body = '{"test_id":"' .. id .. '","patient_id":"p-' .. counter ..
      '","clinic_id":"bench-post","test_type":"blood","result":"negative"}'
  return wrk.format("POST", "/tests", headers, body)
end
