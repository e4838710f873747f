-- bench/gateway.lua — wrk script of bench/gateway.sh: POST /api/rpc/<fn> through the gateway.
--
--   wrk ... -s bench/gateway.lua URL -- FUNCTION ACCOUNTS_LUA TOKEN_FILE RUN_ID
--
--   FUNCTION     check_entitlement | meter_consumption
--   ACCOUNTS_LUA a Lua file returning the table of account ids (md5(n::text)::uuid, n = 1..10000),
--                written by gateway.sh
--   TOKEN_FILE   a file holding the JWT (role mec_service, the bench namespace)
--   RUN_ID       makes meter_consumption's idempotency keys unique across runs
--
-- Every request draws a random account of the 10 000 (math.random, seeded per thread);
-- meter_consumption gets a fresh idempotency key per request ("<run>-<thread>-<counter>").
-- done() prints one line "MECGW key=value ..." that gateway.sh parses: requests, duration,
-- p50/p99 latency (wrk's --latency histogram), non-2xx responses by status and socket errors,
-- plus the first non-2xx body seen, so that a run with errors says so.

local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  table.insert(threads, thread)
end

local fn, accounts, n_accounts, token, run_id, counter, path, headers
non2xx = 0
status_counts = {}
first_error = ""

function init(args)
  fn = args[1]
  accounts = dofile(args[2])
  n_accounts = #accounts
  local f = assert(io.open(args[3], "r"))
  token = f:read("*l")
  f:close()
  run_id = args[4] or tostring(os.time())
  counter = 0
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  path = "/api/rpc/" .. fn
  headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json",
  }
  if fn ~= "check_entitlement" and fn ~= "meter_consumption" then
    error("gateway.lua: unknown function " .. tostring(fn))
  end
end

function request()
  local account = accounts[math.random(n_accounts)]
  local body
  if fn == "meter_consumption" then
    counter = counter + 1
    body = string.format(
      '{"p_idempotency_key":"%s-%d-%d","p_account_id":"%s","p_resource_type":"bench_units","p_quantity":1}',
      run_id, tid, counter, account)
  else
    body = string.format(
      '{"p_account_id":"%s","p_resource_type":"bench_units","p_requested_qty":1}', account)
  end
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    local k = tostring(status)
    status_counts[k] = (status_counts[k] or 0) + 1
    if first_error == "" then
      first_error = string.sub(tostring(body or ""), 1, 300)
    end
  end
end

function done(summary, latency, requests)
  local bad, by_status, sample = 0, {}, ""
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non2xx") or 0)
    local sc = t:get("status_counts") or {}
    for k, v in pairs(sc) do
      by_status[k] = (by_status[k] or 0) + v
    end
    local fe = t:get("first_error") or ""
    if sample == "" and fe ~= "" then
      sample = fe
    end
  end
  local parts = {}
  for k, v in pairs(by_status) do
    table.insert(parts, k .. ":" .. v)
  end
  table.sort(parts)
  local e = summary.errors
  sample = string.gsub(sample, "[%c\t ]+", " ")
  io.write(string.format(
    "MECGW requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d non2xx=%d statuses=%s " ..
    "connect_errors=%d read_errors=%d write_errors=%d timeouts=%d first_error=%s\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    bad, (#parts > 0 and table.concat(parts, ",") or "-"),
    e.connect, e.read, e.write, e.timeout, (sample ~= "" and sample or "-")))
end
