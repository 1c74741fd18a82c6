-- Driven by tests/test_nvim.py in a headless Neovim:
--   nvim --headless --clean -u NONE --cmd "set rtp+=editors/nvim" -c "luafile THIS"
-- Environment: PLOKE_TEST_CMD (JSON list: the server command), PLOKE_TEST_ROOT,
-- PLOKE_TEST_FILE, PLOKE_TEST_START, PLOKE_TEST_END (the snippet to read),
-- PLOKE_TEST_READY (file written once the snippet checks are done: the test then changes
-- PLOKE_TEST_CHANGED), PLOKE_TEST_OUT (the results, as JSON). Neovim always quits, and
-- failures are reported in the results as "error".
local env = vim.env
local out = {}
local TIMEOUT = 30000 -- ms; generous: only a failing run waits this long
local t0 = vim.loop.hrtime()
out.ms = {}
local function mark(name)
  out.ms[name] = math.floor((vim.loop.hrtime() - t0) / 1e6)
end

local function write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function run()
  vim.cmd("runtime! plugin/ploke.lua")
  local ploke = require("ploke")
  ploke.setup({ cmd = vim.fn.json_decode(env.PLOKE_TEST_CMD), root = env.PLOKE_TEST_ROOT })
  assert(ploke.wait_ready(TIMEOUT), "server not initialized in time")
  mark("initialized")

  -- :PlokeStatus
  vim.cmd("PlokeStatus")
  assert(vim.wait(TIMEOUT, function()
    return ploke.last_status ~= nil
  end, 10), ":PlokeStatus got no answer")
  out.status = ploke.last_status
  out.status_summary = ploke.status_summary(ploke.last_status)

  -- Snippet through the Lua API, then through :PlokeSnippet (a scratch buffer).
  local s, e = tonumber(env.PLOKE_TEST_START), tonumber(env.PLOKE_TEST_END)
  local text, hash = ploke.get_snippet(env.PLOKE_TEST_FILE, s, e)
  out.api_text, out.api_hash = text or vim.NIL, hash or vim.NIL
  local whole = ploke.get_snippet(env.PLOKE_TEST_FILE)
  out.api_whole = whole or vim.NIL
  local _, missing_err = ploke.get_snippet(env.PLOKE_TEST_ROOT .. "/no-such-file")
  out.api_missing_error = missing_err or vim.NIL

  vim.cmd(string.format("PlokeSnippet %s %d %d", vim.fn.fnameescape(env.PLOKE_TEST_FILE), s, e))
  assert(vim.wait(TIMEOUT, function()
    return ploke.last_snippet_buf ~= nil
  end, 10), ":PlokeSnippet showed nothing")
  local buf = ploke.last_snippet_buf
  out.buf_lines = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
  out.buf_text = vim.b[buf].ploke_text
  out.buf_name = vim.api.nvim_buf_get_name(buf)
  mark("snippets")

  -- Change notification: the test changes a file once it sees the ready file.
  write_file(env.PLOKE_TEST_READY, "ready\n")
  local changed = env.PLOKE_TEST_CHANGED
  out.got_event = vim.wait(TIMEOUT, function()
    for _, ev in ipairs(ploke.events) do
      if ev.filePath == changed then
        return true
      end
    end
    return false
  end, 20)
  out.events = ploke.events
  mark("event")
end

local ok, err = xpcall(run, debug.traceback)
if not ok then
  out.error = tostring(err)
end
write_file(env.PLOKE_TEST_OUT, vim.fn.json_encode(out))
vim.cmd("qa!")
