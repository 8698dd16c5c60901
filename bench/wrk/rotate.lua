-- The realistic mix: each request goes to the next of COUNT functions
-- PREFIX0..PREFIX(COUNT-1) (script arguments, default /invoke/r and 10),
-- with a key drawn from a small set so the functions' maps stay bounded.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local prefix, count, i = "/invoke/r", 10, 0

-- Runs once per thread in the main Lua state: gives each thread its own
-- starting point so threads do not hit the same function in lockstep.
local threads = 0
function setup(thread)
  thread:set("offset", threads * 3)
  threads = threads + 1
end

function init(args)
  prefix = args[1] or prefix
  count = tonumber(args[2]) or count
  i = offset or 0
end

function request()
  i = i + 1
  local body = string.format('{"key":"k%d","n":%d}', i % 97, i)
  return wrk.format(nil, prefix .. (i % count), nil, body)
end
