//! Makes the V8 startup snapshot of Deno's runtime JavaScript at build time.
//!
//! Without it, every worker start would read and compile Deno's extension
//! sources from the cargo registry (hundreds of ms, and the binary would only
//! run on the machine that built it). The snapshot holds everything evaluated
//! during bootstrap; lazily loaded files that the snapshot did not consume
//! are embedded as transpiled, ASCII-only source tables.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use deno_runtime::snapshot::{create_runtime_snapshot, LazyExtensionFileKind};

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let output =
        create_runtime_snapshot(out.join("RUNTIME_SNAPSHOT.bin"), Default::default(), vec![]);
    let consumed: HashSet<&str> = output
        .consumed_lazy_specifiers
        .iter()
        .map(String::as_str)
        .collect();

    let (mut js, mut esm) = (String::new(), String::new());
    for file in &output.lazy_extension_files {
        if consumed.contains(file.specifier.as_str()) {
            continue;
        }
        println!("cargo:rerun-if-changed={}", file.path.display());
        let source = std::fs::read_to_string(&file.path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.path.display()));
        let (code, _) = deno_runtime::transpile::maybe_transpile_source(
            file.specifier.clone().into(),
            source.into(),
        )
        .unwrap_or_else(|e| panic!("transpiling {}: {e}", file.specifier));
        let table = match file.kind {
            LazyExtensionFileKind::Js => &mut js,
            LazyExtensionFileKind::Esm => &mut esm,
        };
        writeln!(
            table,
            "    ({:?}, {:?}),",
            file.specifier,
            to_ascii_js(code.as_str())
        )
        .unwrap();
    }
    std::fs::write(
        out.join("residual.rs"),
        format!(
            "pub static RESIDUAL_LAZY_JS: &[(&str, &str)] = &[\n{js}];\n\
             pub static RESIDUAL_LAZY_ESM: &[(&str, &str)] = &[\n{esm}];\n"
        ),
    )
    .expect("writing residual.rs");
    println!("cargo:rerun-if-changed=build.rs");
}

/// deno_core requires residual sources to be ASCII; JavaScript accepts
/// `\uXXXX` escapes in strings, templates, regexps, identifiers and comments.
fn to_ascii_js(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    for ch in src.chars() {
        if ch.is_ascii() {
            out.push(ch);
        } else {
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(out, "\\u{:04X}", unit).unwrap();
            }
        }
    }
    out
}
