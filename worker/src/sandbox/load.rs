//! Loading the function's code: syntax check, top-level evaluation (under
//! the same interrupt rules as invocations), and finding the handler.

use deno_runtime::deno_core::error::JsError;
use deno_runtime::deno_core::{self, v8, ModuleCodeString};
use fn_protocol::{truncate_text, InitError, InitErrorKind, MAX_TEXT_BYTES};

use super::loader::refused_import;
use super::{internal, Sandbox};
use crate::interrupt::Running;

const PICK_JS: &str = include_str!("../js/pick.js");
const PICK_SCRIPT_JS: &str = include_str!("../js/pick_script.js");

/// Top-level code runs as invocation 0 for the interrupt's purposes: a
/// deploy deadline cancels it like any other call.
pub const TOP_LEVEL_ID: u64 = 0;

fn init_error(kind: InitErrorKind, message: impl Into<String>) -> InitError {
    let mut message = message.into();
    truncate_text(&mut message, MAX_TEXT_BYTES);
    InitError {
        kind,
        message,
        line: None,
        column: None,
    }
}

impl Sandbox {
    /// Parses, compiles and evaluates the function's code, then finds its
    /// handler. Top-level code runs here, exactly once.
    pub async fn load(&mut self, code: String) -> Result<(), InitError> {
        let main = self.loader.main.borrow().clone();
        let is_script = check_syntax(&main, &code)?;
        let found = if is_script {
            let name: &'static str = Box::leak(main.to_string().into_boxed_str());
            self.interrupt.enter(Running::Call(TOP_LEVEL_ID));
            let result = self.worker.execute_script(name, code.into());
            let terminated = self.interrupt.exit();
            self.after_top_level(terminated.is_some())?;
            result.map_err(|e| self.top_level_error(&e))?;
            let pick = self
                .worker
                .execute_script("[fn:pick]", ModuleCodeString::from_static(PICK_SCRIPT_JS))
                .map_err(|e| internal(e.to_string()))?;
            Some(pick)
        } else {
            *self.loader.code.borrow_mut() = Some(code);
            let id = match self.worker.preload_main_module(&main).await {
                Ok(id) => id,
                Err(e) => return Err(self.module_error(e.to_string())),
            };
            self.interrupt.enter(Running::Loop);
            let evaluated = self.worker.evaluate_module(id).await;
            let terminated = self.interrupt.exit();
            self.after_top_level(terminated.is_some())?;
            if let Err(e) = evaluated {
                return Err(self.module_error(e.to_string()));
            }
            let ns = self
                .worker
                .js_runtime
                .get_module_namespace(id)
                .map_err(|e| internal(e.to_string()))?;
            let ns: v8::Global<v8::Value> = {
                deno_core::scope!(scope, &mut self.worker.js_runtime);
                let local = v8::Local::new(scope, ns);
                v8::Global::new(scope, v8::Local::<v8::Value>::from(local))
            };
            let pick = self
                .worker
                .execute_script("[fn:pick]", ModuleCodeString::from_static(PICK_JS))
                .map_err(|e| internal(e.to_string()))?;
            let pick = super::invoke::as_function(&mut self.worker, pick)
                .ok_or_else(|| internal("pick is not a function"))?;
            let found = self
                .worker
                .js_runtime
                .call_with_args(&pick, &[ns])
                .await
                .map_err(|e| internal(e.to_string()))?;
            Some(found)
        };
        let handler = found.and_then(|f| super::invoke::as_function(&mut self.worker, f));
        self.handler = Some(handler.ok_or_else(|| {
            init_error(
                InitErrorKind::NoHandler,
                "the code defines no handler: declare `function handler(data)` (or a top-level \
                 `const handler = ...`) or export `handler` (`export default function handler`, \
                 `export function handler`, `export default { handler }`)",
            )
        })?);
        Ok(())
    }

    /// Memory and self-exit at deploy time are the caller's error (400), with
    /// a precise message, never a crash.
    fn after_top_level(&mut self, terminated: bool) -> Result<(), InitError> {
        if terminated
            || self
                .worker
                .js_runtime
                .v8_isolate()
                .is_execution_terminating()
        {
            self.worker
                .js_runtime
                .v8_isolate()
                .cancel_terminate_execution();
        }
        if self.heap_exhausted.get() {
            return Err(init_error(
                InitErrorKind::MemoryLimit,
                format!("the top-level code exceeded the {}", self.memory_message()),
            ));
        }
        Ok(())
    }

    fn module_error(&self, message: String) -> InitError {
        if let Some(name) = self.loader.first_refused.borrow().as_deref() {
            return init_error(InitErrorKind::Import, refused_import(name));
        }
        classify_top_level(message, None, None)
    }

    fn top_level_error(&self, e: &JsError) -> InitError {
        let frame = e.frames.first();
        classify_top_level(
            e.exception_message.clone(),
            frame.and_then(|f| f.line_number).map(|n| n as u32),
            frame.and_then(|f| f.column_number).map(|n| n as u32),
        )
    }
}

fn classify_top_level(message: String, line: Option<u32>, column: Option<u32>) -> InitError {
    let kind = if message.contains("Deno.exit() is not allowed") {
        InitErrorKind::Exit
    } else {
        InitErrorKind::TopLevel
    };
    let mut e = init_error(kind, message);
    e.line = line;
    e.column = column;
    e
}

/// Parses the code up front so a syntax error is reported with its position,
/// and tells a classic script (no import/export) from an ES module.
fn check_syntax(specifier: &deno_core::ModuleSpecifier, code: &str) -> Result<bool, InitError> {
    use deno_ast::diagnostics::Diagnostic;
    let parsed = deno_ast::parse_program(deno_ast::ParseParams {
        specifier: specifier.clone(),
        text: code.into(),
        media_type: deno_ast::MediaType::JavaScript,
        capture_tokens: false,
        scope_analysis: false,
        maybe_syntax: None,
    });
    match parsed {
        Ok(parsed) => Ok(parsed.compute_is_script()),
        Err(diag) => {
            let pos = diag.display_position();
            let mut e = init_error(
                InitErrorKind::Syntax,
                format!(
                    "SyntaxError: {} (line {}, column {})",
                    diag.message(),
                    pos.line_number,
                    pos.column_number
                ),
            );
            e.line = Some(pos.line_number as u32);
            e.column = Some(pos.column_number as u32);
            Err(e)
        }
    }
}
