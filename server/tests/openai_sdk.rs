//! Runs the official `openai` Python SDK suite (`tests/openai_sdk/`)
//! against this build's binary. Needs `python3` with `openai` and `pytest`
//! (`pip install -r server/tests/openai_sdk/requirements.txt`; `.ci/run`
//! installs them).

mod common;

#[test]
fn openai_python_sdk_suite() {
    let _serial = common::serial();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk");
    let out = std::process::Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", dir])
        .env("LLM_SERVE_BIN", env!("CARGO_BIN_EXE_llm-serve"))
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => panic!("cannot run python3 -m pytest: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the OpenAI SDK suite failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
