//! Dockerfile front end for firebuild: parser, typed AST with source
//! positions, BuildKit-exact word expansion, ARG/ENV scoping and stages.
//! No I/O: text in, values out.
//!
//! Typical use by a build engine:
//!
//! ```
//! use firebuild_dockerfile::{parse, GlobalScope, Platform, InstructionKind, Env};
//! use std::collections::BTreeMap;
//!
//! let df = parse("ARG BASE=alpine\nFROM $BASE AS app\nENV A=1\nWORKDIR /srv/$A\n", "Dockerfile").unwrap();
//! let globals = GlobalScope::new(&df, &BTreeMap::new(), &Platform::host(), &Platform::host()).unwrap();
//! let graph = df.resolve_stages(&globals).unwrap();
//! let order = graph.build_order(df.target_stage(None).unwrap());
//! for idx in order {
//!     let mut scope = globals.stage_scope(Env::new()); // base image env here
//!     for ins in &df.stages[idx].instructions {
//!         let expanded = scope.expand_instruction(&ins.kind).unwrap();
//!         scope.apply(&ins.kind, &globals).unwrap();
//!         if let InstructionKind::Workdir(dir) = expanded {
//!             assert_eq!(dir, "/srv/1");
//!         }
//!     }
//! }
//! ```

mod ast;
mod dockerfile;
mod duration;
mod env;
mod error;
mod flags;
mod heredoc;
mod instructions;
mod lexer;
mod mount;
mod parser;
mod pattern;
mod render;
mod scope;
mod stages;
mod values;
mod words;

pub use ast::*;
pub use dockerfile::{parse, parse_instructions, ParsedInstructions};
pub use env::{Env, EnvLookup};
pub use error::{ExpandError, ParseError, Position, Span};
pub use lexer::{Expansion, ShellLex};
pub use mount::{CacheSharing, Mount, MountSpec, MountType};
pub use render::render;
pub use scope::{GlobalScope, Platform, StageScope};
pub use stages::{Dependency, FromRef, ResolvedStage, StageBase, StageGraph};
pub use values::{parse_signal, PortSpec};

/// Serialize the AST as pretty JSON (`firebuild dockerfile parse --json`).
pub fn to_json(df: &Dockerfile) -> String {
    // Serializing plain data structures cannot fail.
    serde_json::to_string_pretty(df)
        .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
}
