-- Define the :Ploke* commands; the server starts on first use (or require("ploke").start()).
if vim.g.loaded_ploke then
  return
end
vim.g.loaded_ploke = true
require("ploke").create_commands()
