//! Stages: name and index resolution, the dependency graph and the build
//! order for a target, following BuildKit:
//!
//! - `FROM x` names a stage only if an *earlier* stage is called `x`
//!   (after expanding global ARGs); otherwise `x` is an image (`scratch`
//!   is the empty image).
//! - `COPY --from=x` and `RUN --mount=from=x` name a stage by index or by
//!   name (case-insensitive, any stage) and otherwise an image.
//! - A cycle is an error.

use crate::ast::*;
use crate::error::{ParseError, Position};
use crate::scope::GlobalScope;
use serde::Serialize;

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum StageBase {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// An earlier stage.
    Stage(StageIndex),
    /// An image reference (expanded), to find in the local store or pull.
    Image(String),
}

/// What `--from=` refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum FromRef {
    Stage(StageIndex),
    Image(String),
}

/// One edge of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    /// The instruction's line.
    pub line: usize,
    pub on: FromRef,
}

/// A stage with FROM expanded and its dependencies resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedStage {
    pub index: StageIndex,
    pub base: StageBase,
    /// `--platform` expanded.
    pub platform: Option<String>,
    /// `COPY --from` and `RUN --mount=from=` references, in order.
    pub dependencies: Vec<Dependency>,
}

/// All stages resolved for one build (one set of global ARG values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageGraph {
    pub stages: Vec<ResolvedStage>,
}

impl Dockerfile {
    /// The stage with this name (case-insensitive).
    pub fn stage_by_name(&self, name: &str) -> Option<&Stage> {
        let lower = name.to_lowercase();
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
    }

    /// The stage to build: the named one (`--dockerfile-stage NAME`) or,
    /// without a name, the last stage.
    pub fn target_stage(&self, target: Option<&str>) -> Result<StageIndex, ParseError> {
        match target {
            None => Ok(self.stages.len().saturating_sub(1)),
            Some(name) => match self.stage_by_name(name) {
                Some(s) => Ok(s.index),
                None => {
                    let names: Vec<&str> = self
                        .stages
                        .iter()
                        .filter_map(|s| s.name.as_deref())
                        .collect();
                    let known = if names.is_empty() {
                        "the Dockerfile names no stages (use FROM image AS name)".to_string()
                    } else {
                        format!("stages: {}", names.join(", "))
                    };
                    Err(ParseError::new(
                        &self.file_name,
                        Position { line: 1, column: 1 },
                        format!("target stage {name:?} could not be found ({known})"),
                    ))
                }
            },
        }
    }

    /// Resolve every stage's base and dependencies with the global ARGs.
    pub fn resolve_stages(&self, globals: &GlobalScope) -> Result<StageGraph, ParseError> {
        let mut stages = Vec::with_capacity(self.stages.len());
        for st in &self.stages {
            let located = |msg: String| {
                ParseError::at_instruction(&self.file_name, st.span, "FROM", &st.original, msg)
            };
            let base_name = globals
                .expand(&st.from.base)
                .map_err(|e| located(e.message))?;
            if base_name.is_empty() {
                return Err(located(format!(
                    "base name ({}) should not be blank",
                    st.from.base
                )));
            }
            let platform = match &st.from.platform {
                None => None,
                Some(p) => {
                    let v = globals.expand(p).map_err(|e| located(e.message))?;
                    if v.is_empty() {
                        return Err(located(format!("empty platform value from expression {p}")));
                    }
                    Some(v)
                }
            };
            let base = if let Some(prev) = self.stages[..st.index]
                .iter()
                .find(|s| s.name.as_deref() == Some(base_name.as_str()))
            {
                StageBase::Stage(prev.index)
            } else if base_name == "scratch" {
                StageBase::Scratch
            } else {
                StageBase::Image(base_name)
            };
            let mut dependencies = Vec::new();
            for ins in &st.instructions {
                let froms: Vec<&str> = match &ins.kind {
                    InstructionKind::Copy(c) => c.from.iter().map(String::as_str).collect(),
                    InstructionKind::Run(r) => r.mounts.iter().filter_map(|m| m.from()).collect(),
                    _ => Vec::new(),
                };
                for f in froms {
                    let on = self.resolve_from(f).map_err(|msg| {
                        ParseError::at_instruction(
                            &self.file_name,
                            ins.span,
                            ins.name(),
                            &ins.original,
                            msg,
                        )
                    })?;
                    dependencies.push(Dependency {
                        line: ins.span.start.line,
                        on,
                    });
                }
            }
            stages.push(ResolvedStage {
                index: st.index,
                base,
                platform,
                dependencies,
            });
        }
        let graph = StageGraph { stages };
        graph.check_cycles(self)?;
        Ok(graph)
    }

    /// What `--from=name` refers to.
    pub fn resolve_from(&self, from: &str) -> Result<FromRef, String> {
        if let Ok(i) = from.parse::<i64>() {
            if i < 0 || i as usize >= self.stages.len() {
                return Err(format!(
                    "invalid stage index {i}: the Dockerfile has {} stage(s)",
                    self.stages.len()
                ));
            }
            return Ok(FromRef::Stage(i as usize));
        }
        Ok(match self.stage_by_name(from) {
            Some(s) => FromRef::Stage(s.index),
            None => FromRef::Image(from.to_string()),
        })
    }

    /// The stages to build for `target` (None: the last stage), dependencies
    /// first, `target` last. Stages the target does not need are left out.
    pub fn stages_needed_for(
        &self,
        target: Option<&str>,
        globals: &GlobalScope,
    ) -> Result<Vec<StageIndex>, ParseError> {
        let t = self.target_stage(target)?;
        Ok(self.resolve_stages(globals)?.build_order(t))
    }
}

impl StageGraph {
    /// Stages `index` depends on directly (its base and `--from` stages).
    pub fn direct_deps(&self, index: StageIndex) -> Vec<StageIndex> {
        let mut out = Vec::new();
        let st = match self.stages.get(index) {
            Some(s) => s,
            None => return out,
        };
        if let StageBase::Stage(b) = st.base {
            out.push(b);
        }
        for d in &st.dependencies {
            if let FromRef::Stage(i) = d.on {
                if !out.contains(&i) {
                    out.push(i);
                }
            }
        }
        out
    }

    /// Dependencies first, `target` last, each stage once.
    pub fn build_order(&self, target: StageIndex) -> Vec<StageIndex> {
        let mut order = Vec::new();
        let mut visited = vec![false; self.stages.len()];
        // Iterative post-order DFS; cycles were rejected on construction.
        let mut stack = vec![(target, false)];
        while let Some((i, expanded)) = stack.pop() {
            if i >= visited.len() {
                continue;
            }
            if expanded {
                if !order.contains(&i) {
                    order.push(i);
                }
                continue;
            }
            if visited[i] {
                continue;
            }
            visited[i] = true;
            stack.push((i, true));
            for d in self.direct_deps(i).into_iter().rev() {
                if !visited[d] {
                    stack.push((d, false));
                }
            }
        }
        order
    }

    fn check_cycles(&self, df: &Dockerfile) -> Result<(), ParseError> {
        // 0 = unvisited, 1 = on the current path, 2 = done.
        let n = self.stages.len();
        let mut state = vec![0u8; n];
        for start in 0..n {
            if state[start] != 0 {
                continue;
            }
            let mut stack: Vec<(StageIndex, usize)> = vec![(start, 0)];
            state[start] = 1;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                let deps = self.direct_deps(node);
                if *next < deps.len() {
                    let d = deps[*next];
                    *next += 1;
                    match state[d] {
                        0 => {
                            state[d] = 1;
                            stack.push((d, 0));
                        }
                        1 => {
                            let st = &df.stages[d];
                            return Err(ParseError::at_instruction(
                                &df.file_name,
                                st.span,
                                "FROM",
                                &st.original,
                                format!(
                                    "circular dependency detected on stage: {}",
                                    st.display_name()
                                ),
                            ));
                        }
                        _ => {}
                    }
                } else {
                    state[node] = 2;
                    stack.pop();
                }
            }
        }
        Ok(())
    }
}
