-- put.lua: wrk script: PUT /tests/{id}, corrections of existing tests, each with its own If-Match.
-- bench.py stores, before each run, `per_thread` tests per wrk thread, named
-- <run prefix>-<thread number>-<1..per_thread> (patient p-<n>, version 1). Each thread corrects
-- its tests in turn and sends each the version its last 200 answered (1 before any), so every
-- answer should be a 200 (a 412 counts as non-2xx). A test comes round again only after
-- per_thread - 1 other requests of its thread, far more than the thread's connections, so its
-- previous correction has been answered. (The versions come from the answers, not from a count
-- of requests: wrk calls request() once more than it sends, to check the script.)
-- Args: run prefix, per_thread [, token].
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

function init(args)
  prefix = (args[1] or "bench") .. "-" .. thread_no .. "-"
  per_thread = tonumber(args[2] or "500")
  counter = 0
  versions = {}
  headers = { ["Content-Type"] = "application/json" }
  if args[3] then headers["Authorization"] = "Bearer " .. args[3] end  -- AUTH=on runs
end

function request()
  local n = counter % per_thread + 1
  counter = counter + 1
  local id = prefix .. n
  headers["If-Match"] = 'W/"' .. (versions[n] or 1) .. '"'
  local body = '{"test_id":"' .. id .. '","patient_id":"p-' .. n ..
      '","clinic_id":"bench-put","test_type":"blood","result":"corrected value ' .. counter ..
      '","status":"amended","reason":"bench correction"}'
  return wrk.format("PUT", "/tests/" .. id, headers, body)
end

function response(status, headers, body)
  if status == 200 then
    local n = tonumber(string.match(body, '"test_id":"[^"]*%-(%d+)"'))
    local version = tonumber(string.match(body, '"version":(%d+)'))
    if n and version then versions[n] = version end
  end
end
