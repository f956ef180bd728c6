//! Input schemas of the tools, as the reference toolset declares them.

use serde_json::{Value, json};

/// `[{"name", "description", "input_schema"}]` for the six worker-side tools of
/// `agent_toolset_20260401`.
pub fn tool_definitions() -> Vec<Value> {
    vec![
        json!({"name": "bash", "description": "Run a command in a persistent bash shell inside the sandbox",
            "input_schema": {"type": "object", "properties": {
                "command": {"type": "string", "description": "The command to run"},
                "restart": {"type": "boolean", "description": "Restart the persistent shell before running"},
                "timeout_ms": {"type": "integer", "description": "Per-call timeout in milliseconds"}}}}),
        json!({"name": "read", "description": "Read a file (text, or images and PDFs as base64 blocks)",
            "input_schema": {"type": "object", "properties": {
                "file_path": {"type": "string"},
                "view_range": {"type": "array", "items": {"type": "integer"},
                    "description": "[start_line, end_line] 1-indexed inclusive"}},
                "required": ["file_path"]}}),
        json!({"name": "write", "description": "Create or overwrite a file",
            "input_schema": {"type": "object", "properties": {
                "file_path": {"type": "string"}, "content": {"type": "string"}},
                "required": ["file_path", "content"]}}),
        json!({"name": "edit", "description": "Replace an exact string in a file",
            "input_schema": {"type": "object", "properties": {
                "file_path": {"type": "string"}, "old_string": {"type": "string"},
                "new_string": {"type": "string"}, "replace_all": {"type": "boolean"}},
                "required": ["file_path", "old_string", "new_string"]}}),
        json!({"name": "glob", "description": "Find files by glob pattern, newest first",
            "input_schema": {"type": "object", "properties": {
                "pattern": {"type": "string"},
                "path": {"type": "string", "description": "Directory to search in. Defaults to the workdir."}},
                "required": ["pattern"]}}),
        json!({"name": "grep", "description": "Search file contents with a regular expression",
            "input_schema": {"type": "object", "properties": {
                "pattern": {"type": "string"}, "path": {"type": "string"}},
                "required": ["pattern"]}}),
    ]
}
