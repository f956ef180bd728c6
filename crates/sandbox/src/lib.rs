//! Local sandbox: the environment worker's tools (bash/read/write/edit/glob/grep) run inside an OS sandbox.
