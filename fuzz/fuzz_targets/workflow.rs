//! Any text as a workflow file: parsed and validated, an error or a workflow, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(workflow) =
            waymark_connectors::Workflow::parse(std::path::Path::new("f.toml"), text)
        {
            for stream in workflow.streams() {
                let _ = workflow.plan(stream, false);
            }
            let _ = workflow.warnings();
        }
    }
});
