//! `parse`: text to [`Dockerfile`] (directives, global ARGs, stages).

use crate::ast::*;
use crate::error::{ParseError, Position};
use crate::instructions::{self, Ctx};
use crate::parser;

/// Parse a Dockerfile. `file_name` is used in error messages only.
///
/// ```
/// let df = firebuild_dockerfile::parse("FROM alpine AS base\nRUN echo hi\n", "Dockerfile").unwrap();
/// assert_eq!(df.stages[0].name.as_deref(), Some("base"));
/// ```
pub fn parse(text: &str, file_name: &str) -> Result<Dockerfile, ParseError> {
    let parsed = parse_instructions(text, file_name)?;
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for ins in parsed.instructions {
        match ins.kind {
            InstructionKind::From(from) => {
                if let Some(name) = &from.name {
                    if let Some(prev) = stages.iter().find(|s| s.name.as_deref() == Some(name)) {
                        return Err(ParseError::at_instruction(
                            file_name,
                            ins.span,
                            "FROM",
                            &ins.original,
                            format!(
                                "duplicate stage name {name:?}: already used by the stage on line {}",
                                prev.span.start.line
                            ),
                        ));
                    }
                }
                stages.push(Stage {
                    index: stages.len(),
                    name: from.name.clone(),
                    from,
                    span: ins.span,
                    original: ins.original,
                    instructions: Vec::new(),
                });
            }
            _ => match stages.last_mut() {
                Some(stage) => stage.instructions.push(ins),
                None => {
                    if matches!(ins.kind, InstructionKind::Arg(_)) {
                        global_args.push(ins);
                    } else {
                        return Err(ParseError::at_instruction(
                            file_name,
                            ins.span,
                            ins.name(),
                            &ins.original,
                            format!(
                                "{} before the first FROM: only ARG may come before FROM (no build stage in current context)",
                                ins.name()
                            ),
                        ));
                    }
                }
            },
        }
    }
    if stages.is_empty() {
        let pos = global_args
            .last()
            .map_or(Position { line: 1, column: 1 }, |a| a.span.start);
        return Err(ParseError::new(
            file_name,
            pos,
            "the Dockerfile has no FROM instruction: there is no stage to build",
        ));
    }
    Ok(Dockerfile {
        file_name: file_name.to_string(),
        directives: parsed.directives,
        global_args,
        stages,
        warnings: parsed.warnings,
    })
}

/// Instructions of a file without the stage structure (FROM included as
/// an instruction). Useful for ONBUILD triggers stored in an image:
/// `parse_instructions(&triggers.join("\n"), "ONBUILD")`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedInstructions {
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
    pub warnings: Vec<Warning>,
}

/// Parse instruction lines without requiring a FROM.
pub fn parse_instructions(text: &str, file_name: &str) -> Result<ParsedInstructions, ParseError> {
    let raw = parser::parse_raw(text, file_name)?;
    if raw.nodes.is_empty() {
        return Err(ParseError::new(
            file_name,
            Position { line: 1, column: 1 },
            "the Dockerfile has no instructions (it is empty or has only comments)",
        ));
    }
    let ctx = Ctx {
        file: file_name,
        escape: raw.directives.escape,
    };
    let mut instructions = Vec::with_capacity(raw.nodes.len());
    for node in &raw.nodes {
        instructions.push(instructions::build(&ctx, node)?);
    }
    Ok(ParsedInstructions {
        directives: raw.directives,
        instructions,
        warnings: raw.warnings,
    })
}
