//! Fuzz the parser and everything that runs on its output without I/O:
//! rendering, JSON, the stage graph and word expansion. Nothing may panic.
#![no_main]

use firebuild_dockerfile::{parse, render, to_json, Env, GlobalScope, Platform, ShellLex};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = Env::from_key_values(["A=1", "B=", "P=/a/b/c.txt"]);
    let _ = ShellLex::new('\\').process(text, &env);
    let _ = ShellLex::new('`').process_words(text, &env);
    let Ok(df) = parse(text, "Dockerfile") else {
        return;
    };
    let _ = render(&df);
    let _ = to_json(&df);
    let host = Platform::host();
    let Ok(globals) = GlobalScope::new(&df, &BTreeMap::new(), &host, &host) else {
        return;
    };
    if let Ok(graph) = df.resolve_stages(&globals) {
        let _ = graph.build_order(df.stages.len().saturating_sub(1));
    }
    for st in &df.stages {
        let mut scope = globals.stage_scope(Env::new());
        for ins in &st.instructions {
            let _ = scope.expand_instruction(&ins.kind);
            let _ = scope.apply(&ins.kind, &globals);
            if let firebuild_dockerfile::InstructionKind::Run(r) = &ins.kind {
                let _ = scope.resolve_mounts(r);
                let _ = r.program();
            }
        }
    }
});
