-- post-spread.lua: wrk script for the scale bench: POST /tests spread as real traffic is, a
-- random one of 5,000 clinics and a random-looking test_id (8 hex digits first, so new ids land
-- all over the test_id index, as UUIDs would), unique per request (run prefix from args, thread
-- number, counter after the random part). Args: run prefix [, token].
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

function init(args)
  prefix = "-" .. (args[1] or "bench") .. "-" .. thread_no .. "-"
  counter = 0
  math.randomseed(os.time() * 100 + thread_no)
  headers = { ["Content-Type"] = "application/json" }
  if args[2] then headers["Authorization"] = "Bearer " .. args[2] end  -- AUTH=on runs
end

function request()
  counter = counter + 1
  local id = string.format("%08x", math.random(0, 0x7fffffff) * 2) .. prefix .. counter
  local body = '{"test_id":"' .. id .. '","patient_id":"patient-' .. math.random(0, 100002) ..
      '","clinic_id":"scale-' .. math.random(0, 4999) .. '","test_type":"blood","result":"negative"}'
  return wrk.format("POST", "/tests", headers, body)
end
