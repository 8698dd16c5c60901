//! `axum-hello`: the baseline for "added latency". Answers
//! `POST /invoke/hello` with `{"message": "Hello, " + name}` like the trivial
//! function, on the same axum/hyper/tokio stack as fn-supervisor but with no
//! worker behind it, so the difference is the runtime's own cost.
//!
//! `axum-hello [ADDR]` (default 127.0.0.1:0) prints
//! "axum-hello listening on http://ADDR" once it accepts connections.

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

async fn hello(Json(data): Json<Value>) -> Json<Value> {
    let name = match &data["name"] {
        Value::String(s) => s.clone(),
        // JavaScript's string concatenation of a non-string.
        Value::Null => "undefined".to_owned(),
        other => other.to_string(),
    };
    Json(json!({ "message": format!("Hello, {name}") }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("axum-hello listening on http://{}", listener.local_addr()?);
    let app = Router::new().route("/invoke/hello", post(hello));
    axum::serve(listener, app).await
}
