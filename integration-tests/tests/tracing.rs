//! OpenTelemetry tracing (docs/observability.md "Tracing"): the real binary exports one
//! span per decision to an OTLP receiver run by the test, over gRPC (a tonic
//! `TraceService`) and over HTTP/protobuf (a plain HTTP/1.1 listener), and each span joins
//! the caller's trace: W3C `traceparent`, B3 multiple headers, the single `b3` header.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::envoy::serve_http_with_body;
use integration_tests::redis::free_port;
use integration_tests::{Rls, request, temp_file};
use ironclad_rls::proto::rate_limit_response::Code;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

const LIMITS: &str = "domain: traced
descriptors:
  - key: user
    rate_limit:
      unit: hour
      requests_per_unit: 1
";

/// The batch processor's delay, short so the test does not wait the default 5 s.
const FAST_EXPORT: [(&str, &str); 1] = [("OTEL_BSP_SCHEDULE_DELAY", "100")];

/// Every span any export delivered, with the service name of its resource.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

impl Received {
    fn add(&self, request: ExportTraceServiceRequest) {
        let mut all = self.0.lock().expect("lock");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    all.push((service.clone(), span));
                }
            }
        }
    }

    fn find(&self, trace_id_hex: &str) -> Option<(String, Span)> {
        let id = hex_bytes(trace_id_hex);
        self.0
            .lock()
            .expect("lock")
            .iter()
            .find(|(_, s)| s.trace_id == id)
            .cloned()
    }

    /// Polls until a span of `trace_id_hex` arrived.
    async fn wait_for(&self, trace_id_hex: &str, rls: &Rls) -> (String, Span) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) = self.find(trace_id_hex) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no span with trace id {trace_id_hex} reached the receiver; the service's log:\n{}",
                rls.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value)
}

fn string(s: &str) -> Option<Value> {
    Some(Value::StringValue(s.to_owned()))
}

/// One call with the given metadata; the answer's overall code.
async fn call(rls: &Rls, user: &str, metadata: &[(&'static str, &str)]) -> i32 {
    let mut req = tonic::Request::new(request("traced", &[&[("user", user)]]));
    for (k, v) in metadata {
        req.metadata_mut()
            .insert(*k, v.parse().expect("ASCII metadata"));
    }
    rls.client()
        .await
        .should_rate_limit(req)
        .await
        .expect("ShouldRateLimit")
        .into_inner()
        .overall_code
}

fn start_rls(endpoint: &str, protocol: &str) -> (tempfile::TempDir, Rls) {
    let (dir, file) = temp_file("limits.yaml", LIMITS);
    let rls = Rls::start_with_env(
        &[
            "--config",
            file.to_str().expect("utf-8 path"),
            "--otlp-endpoint",
            endpoint,
            "--otlp-protocol",
            protocol,
            "--trace-service-name",
            "rls-under-test",
        ],
        &FAST_EXPORT,
    );
    (dir, rls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_joins_the_w3c_caller() {
    let received = Received::default();
    let port = free_port();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(received.clone()))
        .serve(([127, 0, 0, 1], port).into());
    tokio::spawn(server);
    let (_dir, rls) = start_rls(&format!("http://127.0.0.1:{port}"), "grpc");

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace}-{parent}-01");
    assert_eq!(
        call(&rls, "alice", &[("traceparent", &traceparent)]).await,
        Code::Ok as i32
    );
    let over_trace = "0af7651916cd43dd8448eb211c80319c";
    let over_parent = format!("00-{over_trace}-b7ad6b7169203331-01");
    assert_eq!(
        call(&rls, "alice", &[("traceparent", &over_parent)]).await,
        Code::OverLimit as i32
    );

    let (service, span) = received.wait_for(trace, &rls).await;
    assert_eq!(service, "rls-under-test");
    assert_eq!(span.name, "ShouldRateLimit");
    assert_eq!(
        span.parent_span_id,
        hex_bytes(parent),
        "a child of the caller's span"
    );
    assert_eq!(attribute(&span, "ratelimit.domain"), string("traced"));
    assert_eq!(
        attribute(&span, "ratelimit.descriptors"),
        Some(Value::IntValue(1))
    );
    assert_eq!(attribute(&span, "ratelimit.overall_code"), string("OK"));
    let (_, over) = received.wait_for(over_trace, &rls).await;
    assert_eq!(
        attribute(&over, "ratelimit.overall_code"),
        string("OVER_LIMIT")
    );

    // A refused request (no domain) is traced too, as an error with gRPC's code.
    let refused_trace = "5b8aa5a2d2c872e8321cf37308d69df2";
    let mut bad = tonic::Request::new(request("", &[&[("user", "x")]]));
    bad.metadata_mut().insert(
        "traceparent",
        format!("00-{refused_trace}-051581bf3cb55c13-01")
            .parse()
            .expect("ASCII"),
    );
    let status = rls
        .client()
        .await
        .should_rate_limit(bad)
        .await
        .expect_err("a request without a domain is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let (_, refused) = received.wait_for(refused_trace, &rls).await;
    assert_eq!(
        attribute(&refused, "rpc.grpc.status_code"),
        Some(Value::IntValue(3))
    );
    let span_status = refused.status.expect("a span status");
    assert_eq!(span_status.code, 2, "STATUS_CODE_ERROR");
    assert!(!span_status.message.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_joins_b3_callers_and_follows_their_sampling() {
    let received = Received::default();
    let paths = Arc::new(Mutex::new(Vec::new()));
    // An OTLP/HTTP receiver: each export answered 200 with an empty export response (which
    // encodes to no bytes).
    let port = serve_http_with_body({
        let (received, paths) = (received.clone(), paths.clone());
        move |head, body| {
            if let Some(path) = head.split(' ').nth(1) {
                paths.lock().expect("lock").push(path.to_owned());
            }
            if let Ok(req) = ExportTraceServiceRequest::decode(body) {
                received.add(req);
            }
            ("200 OK", "application/x-protobuf", String::new())
        }
    });
    let (_dir, rls) = start_rls(&format!("http://127.0.0.1:{port}"), "http");

    // Unsampled first: exports keep order, so once the later spans arrived this one would
    // have too, had it been exported.
    let unsampled = "a3ce929d0e0e47364bf92f3577b34da6";
    call(
        &rls,
        "u1",
        &[
            ("x-b3-traceid", unsampled),
            ("x-b3-spanid", "1111111111111111"),
            ("x-b3-sampled", "0"),
        ],
    )
    .await;
    let multi = "80f198ee56343ba864fe8b2a57d3eff7";
    call(
        &rls,
        "u2",
        &[
            ("x-b3-traceid", multi),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let single = "463ac35c9f6413ad48485a3953bb6124";
    let b3 = format!("{single}-a2fb4a1d1a96d312-1");
    call(&rls, "u3", &[("b3", &b3)]).await;

    let (_, span) = received.wait_for(multi, &rls).await;
    assert_eq!(span.parent_span_id, hex_bytes("e457b5a2e4d86bd1"));
    assert_eq!(attribute(&span, "ratelimit.overall_code"), string("OK"));
    let (service, span) = received.wait_for(single, &rls).await;
    assert_eq!(service, "rls-under-test");
    assert_eq!(span.parent_span_id, hex_bytes("a2fb4a1d1a96d312"));
    assert!(
        received.find(unsampled).is_none(),
        "a caller that said not sampled gets no span"
    );
    assert!(
        paths
            .lock()
            .expect("lock")
            .iter()
            .all(|p| p == "/v1/traces"),
        "OTLP/HTTP posts to /v1/traces"
    );
}
