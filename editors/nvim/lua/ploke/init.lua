-- ploke.nvim: a small Neovim client of ploke-io-server (Neovim 0.7+).
--
-- Starts the server with vim.lsp.start_client (one client per Neovim), asks for change
-- notifications (initializationOptions.watch = true) and offers :PlokeStatus, :PlokeSnippet
-- and a Lua API. See editors/nvim/README.md.
local M = {}

M.config = {
  -- Command that starts the server over stdio. "--root <root>" is appended unless the
  -- command already has a "--root".
  cmd = { "python3", "-m", "ploke_io_server" },
  -- Workspace root (default: Neovim's current directory when the server starts).
  root = nil,
  -- Echo a one-line summary of each ploke/didChangeFiles notification.
  notify_changes = true,
  -- Called as on_change(events) for each ploke/didChangeFiles notification.
  on_change = nil,
  -- Milliseconds the synchronous API waits for the server.
  timeout_ms = 10000,
  -- Keep at most this many events in M.events (oldest dropped first).
  max_events = 1000,
}

-- Every event received through ploke/didChangeFiles, oldest first: tables as on the wire,
-- { filePath = ..., kind = "created"|"modified"|"removed"|"renamed", oldPath?, fileHash?,
-- origin? }.
M.events = {}
-- The last ploke/status result (set by M.status and :PlokeStatus).
M.last_status = nil
-- The id of the running client, or nil.
M.client_id = nil

local initialized = false
local client_obj = nil -- the client, as on_init gave it (get_client_by_id is nil during on_init)
local pending = {} -- functions waiting for the initialize answer

local function notify(msg, level)
  vim.notify("ploke: " .. msg, level or vim.log.levels.INFO)
end

local function has_root_flag(cmd)
  for _, arg in ipairs(cmd) do
    if arg == "--root" or vim.startswith(arg, "--root=") then
      return true
    end
  end
  return false
end

local function on_did_change_files(_, params)
  local events = (params and params.events) or {}
  for _, ev in ipairs(events) do
    table.insert(M.events, ev)
  end
  local excess = #M.events - M.config.max_events
  if excess > 0 then
    for _ = 1, excess do
      table.remove(M.events, 1)
    end
  end
  if M.config.on_change then
    local ok, err = pcall(M.config.on_change, events)
    if not ok then
      notify("on_change failed: " .. tostring(err), vim.log.levels.ERROR)
    end
  end
  if M.config.notify_changes and #events > 0 then
    local parts = {}
    for i, ev in ipairs(events) do
      if i > 3 then
        table.insert(parts, string.format("(+%d more)", #events - 3))
        break
      end
      table.insert(parts, ev.kind .. " " .. vim.fn.fnamemodify(ev.filePath, ":~:."))
    end
    notify(table.concat(parts, ", "))
  end
end

--- Merge opts into the configuration and define the commands. Does not start the server.
function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", M.config, opts or {})
  if opts and opts.cmd then
    M.config.cmd = opts.cmd -- lists are replaced, not merged
  end
  return M
end

--- Start the server (once). Returns the client id.
function M.start()
  if M.client_id and not vim.lsp.client_is_stopped(M.client_id) then
    return M.client_id
  end
  local root = vim.fn.fnamemodify(M.config.root or vim.fn.getcwd(), ":p"):gsub("(.)/$", "%1")
  local cmd = vim.deepcopy(M.config.cmd)
  if not has_root_flag(cmd) then
    table.insert(cmd, "--root")
    table.insert(cmd, root)
  end
  initialized = false
  client_obj = nil
  pending = {}
  M.client_id = vim.lsp.start_client({
    name = "ploke",
    cmd = cmd,
    root_dir = root,
    init_options = { watch = true },
    handlers = { ["ploke/didChangeFiles"] = on_did_change_files },
    on_init = function(client)
      client_obj = client
      initialized = true
      local queued = pending
      pending = {}
      for _, fn in ipairs(queued) do
        fn()
      end
    end,
    on_exit = function(code, signal, id)
      if id ~= M.client_id then
        return -- an earlier client, already replaced
      end
      initialized = false
      client_obj = nil
      M.client_id = nil
      local queued = pending -- requests held for initialize now fail: no server
      pending = {}
      vim.schedule(function()
        for _, fn in ipairs(queued) do
          fn()
        end
        if code ~= 0 then
          notify(string.format("server exited (code %s, signal %s)", code, signal), vim.log.levels.WARN)
        end
      end)
    end,
  })
  if not M.client_id then
    notify("could not start " .. table.concat(cmd, " "), vim.log.levels.ERROR)
  end
  return M.client_id
end

--- Stop the server.
function M.stop()
  if M.client_id then
    vim.lsp.stop_client(M.client_id)
  end
  M.client_id = nil
  client_obj = nil
  initialized = false
end

--- Whether the server answered initialize.
function M.is_ready()
  return initialized and M.client_id ~= nil
end

--- Wait until the server is initialized. Returns true, or false on timeout.
function M.wait_ready(timeout_ms)
  M.start()
  return vim.wait(timeout_ms or M.config.timeout_ms, M.is_ready, 20)
end

--- Send a request; handler(err, result) runs on the main loop once it is answered. The
--- server is started if needed, and the request is held until initialize is answered.
function M.request(method, params, handler)
  local function send()
    local client = M.client_id and (vim.lsp.get_client_by_id(M.client_id) or client_obj)
    if not client or client.is_stopped() then
      handler({ code = -32099, message = "ploke server is not running" }, nil)
      return
    end
    local ok = client.request(method, params, function(err, result)
      handler(err, result)
    end)
    if not ok then
      handler({ code = -32099, message = "ploke server is not running" }, nil)
    end
  end
  if not M.start() then
    handler({ code = -32099, message = "could not start the ploke server" }, nil)
  elseif M.is_ready() then
    send()
  else
    table.insert(pending, send)
  end
end

--- Send a request and wait for its answer. Returns result, or nil and an error message.
function M.request_sync(method, params, timeout_ms)
  local done, err, result = false, nil, nil
  M.request(method, params, function(e, r)
    done, err, result = true, e, r
  end)
  if not vim.wait(timeout_ms or M.config.timeout_ms, function()
    return done
  end, 10) then
    return nil, method .. ": timed out"
  end
  if err then
    return nil, string.format("%s: %s", method, err.message or vim.inspect(err))
  end
  return result
end

local function snippet_params(path, start_byte, end_byte)
  return {
    snippets = {
      {
        filePath = vim.fn.fnamemodify(path, ":p"),
        startByte = start_byte,
        endByte = end_byte,
      },
    },
  }
end

local function first_item(result)
  local item = result and result.results and result.results[1]
  if not item then
    return nil, "empty answer"
  end
  if not item.ok then
    local e = item.error or {}
    return nil, string.format("%s: %s", e.kind or "error", e.message or "?")
  end
  return item
end

--- Read bytes [start_byte, end_byte) of path (both optional: the whole file) and wait.
--- Returns text, fileHash; or nil and an error message.
function M.get_snippet(path, start_byte, end_byte, timeout_ms)
  local result, err =
    M.request_sync("ploke/getSnippets", snippet_params(path, start_byte, end_byte), timeout_ms)
  if not result then
    return nil, err
  end
  local item, item_err = first_item(result)
  if not item then
    return nil, item_err
  end
  return item.text, item.fileHash
end

--- ploke/status, waiting for it. Returns the result, or nil and an error message.
function M.status(timeout_ms)
  local result, err = M.request_sync("ploke/status", nil, timeout_ms)
  if result then
    M.last_status = result
  end
  return result, err
end

--- One line about a ploke/status result.
function M.status_summary(st)
  local counters = st.counters or {}
  local watcher = st.watcher or {}
  return string.format(
    "ploke-io-server %s, roots %s, watch %s, %d notification(s), %d file(s) read",
    tostring(st.version),
    table.concat(st.roots or {}, ", "),
    watcher.enabled and "on" or "off",
    counters.notifications or 0,
    counters.filesRead or 0
  )
end

--- Show text in a new scratch buffer (in a split); returns the buffer number.
function M.show_text(text, name)
  local lines = vim.split(text, "\n", { plain = true })
  if #lines > 1 and lines[#lines] == "" then
    table.remove(lines) -- a final newline ends the last line, as in a file
  end
  vim.cmd("new")
  local buf = vim.api.nvim_get_current_buf()
  vim.bo[buf].buftype = "nofile"
  vim.bo[buf].bufhidden = "wipe"
  vim.bo[buf].swapfile = false
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  vim.b[buf].ploke_text = text
  pcall(vim.api.nvim_buf_set_name, buf, name)
  return buf
end

-- :PlokeStatus
function M.cmd_status()
  M.request("ploke/status", nil, function(err, result)
    if err then
      notify("status failed: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
      return
    end
    M.last_status = result
    vim.api.nvim_echo({ { M.status_summary(result) } }, true, {})
  end)
end

-- :PlokeSnippet FILE [START END]
function M.cmd_snippet(args)
  local path, s, e = args[1], tonumber(args[2]), tonumber(args[3])
  if not path or #args == 2 or #args > 3 or (args[2] and not s) or (args[3] and not e) then
    notify("usage: :PlokeSnippet FILE [START END] (byte offsets, END exclusive)", vim.log.levels.ERROR)
    return
  end
  local abs = vim.fn.fnamemodify(path, ":p")
  M.request("ploke/getSnippets", snippet_params(abs, s, e), function(err, result)
    if err then
      notify("getSnippets failed: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
      return
    end
    local item, item_err = first_item(result)
    if not item then
      notify(path .. ": " .. item_err, vim.log.levels.ERROR)
      return
    end
    local range = s and string.format(":%d-%d", s, e) or ""
    M.last_snippet_buf = M.show_text(item.text, "ploke://" .. abs .. range)
  end)
end

--- Define :PlokeStatus, :PlokeSnippet, :PlokeStart, :PlokeStop and :PlokeEvents.
function M.create_commands()
  local cmd = vim.api.nvim_create_user_command
  cmd("PlokeStatus", M.cmd_status, { nargs = 0, desc = "ploke-io-server status" })
  cmd("PlokeSnippet", function(o)
    M.cmd_snippet(o.fargs)
  end, { nargs = "+", complete = "file", desc = "Show a byte range of a file read by ploke" })
  cmd("PlokeStart", function()
    M.start()
  end, { nargs = 0 })
  cmd("PlokeStop", function()
    M.stop()
  end, { nargs = 0 })
  cmd("PlokeEvents", function()
    for _, ev in ipairs(M.events) do
      print(ev.kind, ev.filePath, ev.oldPath or "", ev.origin or "")
    end
  end, { nargs = 0, desc = "List the ploke/didChangeFiles events received" })
end

return M
