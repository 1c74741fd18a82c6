"""The JSON-RPC shell around the engine: pygls protocol, connections, stdio and TCP."""
