//! Serves exactly one module, the function's code; every other import is
//! refused. Resolving to a `blocked:` URL instead of failing matters: a
//! resolve error would let deno_core fall back to its built-in `node:` table.

use std::cell::RefCell;

use deno_runtime::deno_core::error::ModuleLoaderError;
use deno_runtime::deno_core::{
    self, ModuleLoadOptions, ModuleLoadReferrer, ModuleLoadResponse, ModuleLoader,
    ModuleResolveResponse, ModuleSource, ModuleSourceCode, ModuleSpecifier, ModuleType,
    ResolutionKind,
};

pub struct Loader {
    pub main: RefCell<ModuleSpecifier>,
    pub code: RefCell<Option<String>>,
    /// The first refused import, for the deploy error; later ones only fail
    /// their own `import()` (a loop of refused imports must not grow memory).
    pub first_refused: RefCell<Option<String>>,
}

impl Loader {
    pub fn new(main: ModuleSpecifier) -> Self {
        Self {
            main: RefCell::new(main),
            code: RefCell::new(None),
            first_refused: RefCell::new(None),
        }
    }
}

pub fn refused_import(name: &str) -> String {
    format!("import of '{name}' is not allowed: functions may not import modules")
}

impl ModuleLoader for Loader {
    fn resolve(
        &self,
        specifier: &str,
        referrer: &str,
        _kind: ResolutionKind,
    ) -> ModuleResolveResponse {
        let main = self.main.borrow();
        if specifier == main.as_str() {
            return Ok(main.clone());
        }
        let target = deno_core::resolve_import(specifier, referrer)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| specifier.to_owned());
        ModuleSpecifier::parse(&format!("blocked:{target}"))
            .map_err(|e| ModuleLoaderError::generic(e.to_string()))
    }

    fn load(
        &self,
        specifier: &ModuleSpecifier,
        _referrer: Option<&ModuleLoadReferrer>,
        _options: ModuleLoadOptions,
    ) -> ModuleLoadResponse {
        if *specifier != *self.main.borrow() {
            let mut name = specifier
                .as_str()
                .strip_prefix("blocked:")
                .unwrap_or(specifier.as_str())
                .to_owned();
            fn_protocol::truncate_text(&mut name, 1024);
            self.first_refused
                .borrow_mut()
                .get_or_insert_with(|| name.clone());
            return ModuleLoadResponse::Sync(Err(ModuleLoaderError::type_error(refused_import(
                &name,
            ))));
        }
        let code = self.code.borrow().clone();
        ModuleLoadResponse::Sync(
            code.map(|js| {
                ModuleSource::new(
                    ModuleType::JavaScript,
                    ModuleSourceCode::String(js.into()),
                    specifier,
                    None,
                )
            })
            .ok_or_else(|| ModuleLoaderError::generic("no function code loaded")),
        )
    }
}
