//! Bad requests get INVALID_ARGUMENT with a message naming the problem; the server keeps
//! serving (service.md §2).

use integration_tests::{Rls, example, request};
use ironclad_rls::proto::RateLimitRequest;
use ironclad_rls::proto::rate_limit_response::Code;
use tonic::Code as GrpcCode;

#[tokio::test]
async fn invalid_requests_are_refused_clearly_and_the_server_keeps_serving() {
    let rls = Rls::start(&["--config", example("full-example.yaml").to_str().unwrap()]);
    let mut c = rls.client().await;
    let long = "v".repeat(4097);
    let many_entries: Vec<(&str, &str)> = vec![("k", "v"); 33];
    let many_descriptors: Vec<&[(&str, &str)]> = vec![&[("k", "v")]; 65];
    let cases: Vec<(RateLimitRequest, &str)> = vec![
        (
            request("", &[&[("endpoint", "kcserl")]]),
            "domain must not be empty",
        ),
        (request("kcse", &[]), "no descriptors"),
        (request("kcse", &[&[]]), "descriptors[0] has no entries"),
        (
            request("kcse", &[&[("endpoint", "kcserl")], &[("", "x")]]),
            "descriptors[1].entries[0] has an empty key",
        ),
        (request("kcse", &many_descriptors), "at most 64"),
        (request("kcse", &[&many_entries]), "at most 32"),
        (
            request("kcse", &[&[("path", long.as_str())]]),
            "longer than 4096 bytes",
        ),
    ];
    for (r, want) in cases {
        let err = c.should_rate_limit(r).await.expect_err("must be refused");
        assert_eq!(err.code(), GrpcCode::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(want),
            "message {:?} does not say {want:?}",
            err.message()
        );
    }

    // A message over 64 KiB is refused by the transport, not by a crash.
    let huge = "x".repeat(3000);
    let big: Vec<(&str, &str)> = vec![("k", huge.as_str()); 30];
    let err = c
        .should_rate_limit(request("kcse", &[&big]))
        .await
        .expect_err("an oversized message must be refused");
    assert_eq!(err.code(), GrpcCode::OutOfRange, "{err:?}");

    // The same connection and a new one still get answers.
    let ok = request(
        "kcse",
        &[&[
            ("endpoint", "kcserl"),
            ("path", "/auth/x"),
            ("consumer", "c"),
        ]],
    );
    assert_eq!(
        c.should_rate_limit(ok.clone())
            .await
            .unwrap()
            .into_inner()
            .overall_code,
        Code::Ok as i32
    );
    let mut fresh = rls.client().await;
    assert_eq!(
        fresh
            .should_rate_limit(ok)
            .await
            .unwrap()
            .into_inner()
            .overall_code,
        Code::Ok as i32
    );
    assert_eq!(rls.admin_get("/healthz").0, 200);
}
