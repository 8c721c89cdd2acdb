//! Flags that change answers: global shadow mode and response headers.

use std::time::Duration;

use integration_tests::{Rls, example, request, wait_for_fresh_window};
use ironclad_rls::proto::rate_limit_response::Code;

#[tokio::test]
async fn global_shadow_mode_answers_ok_with_truthful_statuses_and_headers() {
    let rls = Rls::start(&[
        "--config",
        example("seed/2.1-per-service.yaml").to_str().unwrap(),
        "--shadow-mode",
        "--response-headers",
    ]);
    let mut c = rls.client().await;
    wait_for_fresh_window(60, Duration::from_secs(10));
    let r = request(
        "kcse",
        &[&[
            ("endpoint", "kcserl"),
            ("path", "/auth/admin/realms/API-TEST-URI-ONLY/"),
            ("consumer", "a"),
        ]],
    );
    for _ in 0..10 {
        c.should_rate_limit(r.clone()).await.unwrap();
    }
    let resp = c.should_rate_limit(r).await.unwrap().into_inner();
    assert_eq!(resp.overall_code, Code::Ok as i32);
    assert_eq!(resp.statuses[0].code, Code::OverLimit as i32);
    let headers: Vec<(&str, &str)> = resp
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(headers[0], ("RateLimit-Limit", "10"));
    assert_eq!(headers[1], ("RateLimit-Remaining", "0"));
    assert_eq!(headers[2].0, "RateLimit-Reset");
    assert_eq!(
        headers.len(),
        3,
        "no Retry-After when the answer is OK: {headers:?}"
    );
}
