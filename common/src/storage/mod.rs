//! Storage-node protocol: page and redo formats, RPC messages, client library (issue 3).
