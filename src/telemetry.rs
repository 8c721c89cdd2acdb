//! OpenTelemetry tracing: one span per `ShouldRateLimit` decision, exported with OTLP
//! (docs/observability.md §7).
//!
//! Off unless `--otlp-endpoint` is given; then [`install`] builds the exporter (gRPC or
//! HTTP/protobuf) behind the SDK's batch processor, which exports from its own thread, so a
//! request only records its span in memory. Without an exporter the gRPC handler's only
//! cost is one load of [`active`] that finds nothing.
//!
//! A span joins the caller's trace: W3C `traceparent` (and `tracestate`) first, else Zipkin
//! B3, as multiple headers (`x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`)
//! or the single `b3` header, the propagators the reference combines. A caller's sampling
//! decision is followed; where it made none, `--trace-sampling-rate` decides.

use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::{Resource, trace::Span};

use crate::proto::{RateLimitRequest, RateLimitResponse, rate_limit_response::Code};
use crate::settings::{OtlpProtocol, TracingArgs};

/// How long shutting down may wait for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start OTLP tracing to {endpoint}: {reason}")]
pub struct TelemetryError {
    endpoint: String,
    reason: String,
}

/// The tracer of the process, when an exporter is configured.
struct Telemetry {
    tracer: SdkTracer,
    sampling_rate: f64,
    propagator: TraceContextPropagator,
}

static ACTIVE: OnceLock<Telemetry> = OnceLock::new();

/// Shuts the exporter down (exporting what is still queued) when dropped, at the end of
/// `serve`.
#[must_use = "dropping the guard stops exporting"]
pub struct Guard {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "OTLP exporter did not shut down cleanly");
        }
    }
}

/// Starts exporting when `--otlp-endpoint` is set (inside a Tokio runtime: the gRPC
/// exporter needs one). `None` when tracing is off.
pub fn install(args: &TracingArgs) -> Result<Option<Guard>, TelemetryError> {
    let Some(endpoint) = &args.otlp_endpoint else {
        return Ok(None);
    };
    let fail = |reason: String| TelemetryError {
        endpoint: endpoint.clone(),
        reason,
    };
    let exporter = match args.otlp_protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build(),
        OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OnRuntime {
                client: HyperClient::with_default_connector(EXPORT_TIMEOUT, None),
                runtime: tokio::runtime::Handle::current(),
            })
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(http_traces_url(endpoint))
            .build(),
    }
    .map_err(|e| fail(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // A caller's decision is followed; a trace we start is sampled at the rate.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            args.trace_sampling_rate,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(args.trace_service_name.clone())
                .build(),
        )
        .build();
    let telemetry = Telemetry {
        tracer: provider.tracer("ironclad-rls"),
        sampling_rate: args.trace_sampling_rate,
        propagator: TraceContextPropagator::new(),
    };
    if ACTIVE.set(telemetry).is_err() {
        return Err(fail("tracing is already set up in this process".into()));
    }
    tracing::info!(
        endpoint = %endpoint,
        protocol = ?args.otlp_protocol,
        service_name = %args.trace_service_name,
        sampling_rate = args.trace_sampling_rate,
        "exporting one span per decision with OTLP"
    );
    Ok(Some(Guard { provider }))
}

/// The deadline of one OTLP/HTTP export (the exporters' usual default).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The hyper client, run on the service's Tokio runtime: the SDK's batch processor exports
/// from a thread of its own, with no Tokio timer or reactor, which hyper needs.
#[derive(Debug)]
struct OnRuntime {
    client: HyperClient,
    runtime: tokio::runtime::Handle,
}

impl HttpClient for OnRuntime {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Pin<Box<dyn Future<Output = ExportResult> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let task = self
            .runtime
            .spawn(async move { client.send_bytes(request).await });
        Box::pin(async move { task.await.map_err(|e| Box::new(e) as HttpError)? })
    }
}

/// What one OTLP/HTTP request gives back.
type ExportResult = Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, HttpError>;

/// The OTLP/HTTP URL for traces: `/v1/traces` added when the endpoint has no path, as the
/// OpenTelemetry exporters do with `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn http_traces_url(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(u) if u.path() == "/" || u.path().is_empty() => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
        _ => endpoint.to_owned(),
    }
}

/// The span of one decision, started when tracing is on.
pub struct DecisionSpan {
    span: Span,
}

impl std::fmt::Debug for DecisionSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionSpan").finish_non_exhaustive()
    }
}

/// Whether an exporter is configured: the gRPC port then keeps every request's headers for
/// [`start`] to read the caller's trace context from.
pub fn enabled() -> bool {
    ACTIVE.get().is_some()
}

/// Starts the span of a decision, joined to the caller's trace found in `metadata`; `None`
/// (at the cost of one load) when tracing is off.
pub fn start(metadata: &tonic::metadata::MetadataMap) -> Option<DecisionSpan> {
    let telemetry = ACTIVE.get()?;
    let headers = Metadata(metadata);
    let parent = caller_context(telemetry, &headers);
    let span = telemetry
        .tracer
        .span_builder("ShouldRateLimit")
        .with_kind(SpanKind::Server)
        .start_with_context(&telemetry.tracer, &parent);
    Some(DecisionSpan { span })
}

impl DecisionSpan {
    /// Records what was decided and ends the span. `message` is the request's bytes, read
    /// here again only for the domain and the number of descriptors, so that the decision
    /// path stays as it is when tracing is off.
    pub fn finish(mut self, message: &[u8], answer: &Result<RateLimitResponse, tonic::Status>) {
        if let Ok(req) = <RateLimitRequest as prost::Message>::decode(message) {
            self.span
                .set_attribute(KeyValue::new("ratelimit.domain", req.domain));
            self.span.set_attribute(KeyValue::new(
                "ratelimit.descriptors",
                i64::try_from(req.descriptors.len()).unwrap_or(i64::MAX),
            ));
        }
        match answer {
            Ok(response) => {
                let code =
                    Code::try_from(response.overall_code).map_or("UNKNOWN", |c| c.as_str_name());
                self.span
                    .set_attribute(KeyValue::new("ratelimit.overall_code", code));
                self.span
                    .set_attribute(KeyValue::new("rpc.grpc.status_code", 0_i64));
            }
            Err(status) => {
                self.span.set_attribute(KeyValue::new(
                    "rpc.grpc.status_code",
                    i64::from(i32::from(status.code())),
                ));
                self.span
                    .set_status(Status::error(status.message().to_owned()));
            }
        }
        self.span.end();
    }
}

/// gRPC metadata as OpenTelemetry's text-map carrier (ASCII values only).
struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The caller's trace: W3C first, then B3; an empty context starts a new trace.
fn caller_context(telemetry: &Telemetry, headers: &dyn Extractor) -> Context {
    let w3c = telemetry.propagator.extract(headers);
    if w3c.span().span_context().is_valid() {
        return w3c;
    }
    match b3_parent(headers, telemetry.sampling_rate) {
        Some(parent) => Context::new().with_remote_span_context(parent),
        None => Context::new(),
    }
}

/// The parent named by B3 headers, single or multiple.
fn b3_parent(headers: &dyn Extractor, sampling_rate: f64) -> Option<SpanContext> {
    let (trace, span, sampled) = match headers.get("b3") {
        Some(single) => parse_b3_single(single)?,
        None => {
            let trace = headers.get("x-b3-traceid")?;
            let span = headers.get("x-b3-spanid")?;
            // `x-b3-flags: 1` is debug, which implies sampled.
            let sampled = if headers.get("x-b3-flags") == Some("1") {
                Some(true)
            } else {
                headers.get("x-b3-sampled").and_then(parse_b3_sampled)
            };
            (parse_trace_id(trace)?, parse_span_id(span)?, sampled)
        }
    };
    // Deferred (no decision from the caller): decided here at the configured rate, on the
    // trace id, so every replica decides the same for one trace.
    let sampled = sampled.unwrap_or_else(|| ratio_sampled(trace, sampling_rate));
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Some(SpanContext::new(
        trace,
        span,
        flags,
        true,
        TraceState::default(),
    ))
}

/// `b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]`; a bare `0`/`1`/`d` carries no
/// parent.
fn parse_b3_single(value: &str) -> Option<(TraceId, SpanId, Option<bool>)> {
    let mut parts = value.trim().split('-');
    let trace = parse_trace_id(parts.next()?)?;
    let span = parse_span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some("d") => Some(true),
        Some(s) => Some(parse_b3_sampled(s)?),
    };
    Some((trace, span, sampled))
}

fn parse_b3_sampled(value: &str) -> Option<bool> {
    match value {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// 32 hex digits, or 16 (a 64-bit B3 trace id, left-padded with zeros); never all zeros.
fn parse_trace_id(hex: &str) -> Option<TraceId> {
    if !(hex.len() == 32 || hex.len() == 16) {
        return None;
    }
    let id = u128::from_str_radix(hex, 16).ok()?;
    (id != 0).then(|| TraceId::from_bytes(id.to_be_bytes()))
}

/// 16 hex digits, never all zeros.
fn parse_span_id(hex: &str) -> Option<SpanId> {
    if hex.len() != 16 {
        return None;
    }
    let id = u64::from_str_radix(hex, 16).ok()?;
    (id != 0).then(|| SpanId::from_bytes(id.to_be_bytes()))
}

/// The ratio decision on a trace id, as the SDK's `TraceIdRatioBased` makes it (its low 64
/// bits, halved, against the rate's share of 2^63).
fn ratio_sampled(trace: TraceId, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    let bytes = trace.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    // The cast is exact enough: the bound only needs the rate's first 53 bits.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bound = (rate * (1u64 << 63) as f64) as u64;
    x < bound
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Headers(HashMap<&'static str, &'static str>);

    impl Extractor for Headers {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).copied()
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().copied().collect()
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> Headers {
        Headers(pairs.iter().copied().collect())
    }

    #[test]
    fn multiple_b3_headers() {
        let h = headers(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ]);
        let p = b3_parent(&h, 0.0).unwrap();
        assert_eq!(p.trace_id().to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(p.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(p.is_sampled() && p.is_remote());
        let unsampled = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ]);
        let p = b3_parent(&unsampled, 1.0).unwrap();
        assert_eq!(p.trace_id().to_string(), "0000000000000000463ac35c9f6413ad");
        assert!(!p.is_sampled(), "the caller's decision wins over the rate");
        let debug = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-flags", "1"),
        ]);
        assert!(b3_parent(&debug, 0.0).unwrap().is_sampled());
    }

    #[test]
    fn single_b3_header() {
        let h = headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]);
        let p = b3_parent(&h, 0.0).unwrap();
        assert_eq!(p.trace_id().to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert!(p.is_sampled());
        let deferred = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1")]);
        assert!(b3_parent(&deferred, 1.0).unwrap().is_sampled());
        assert!(!b3_parent(&deferred, 0.0).unwrap().is_sampled());
        for bad in [
            "0",
            "1",
            "d",
            "xyz-e457b5a2e4d86bd1-1",
            "80f198ee56343ba864fe8b2a57d3eff7-0000000000000000",
        ] {
            assert!(b3_parent(&headers(&[("b3", bad)]), 1.0).is_none(), "{bad}");
        }
        assert!(b3_parent(&headers(&[]), 1.0).is_none());
    }

    #[test]
    fn traces_start_here_without_caller_headers() {
        let telemetry_less = TraceContextPropagator::new();
        let cx = telemetry_less.extract(&headers(&[]));
        assert!(!cx.span().span_context().is_valid());
        let cx = telemetry_less.extract(&headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]));
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn ratio_decision_matches_its_bounds() {
        let t = TraceId::from_bytes([0xff; 16]);
        assert!(ratio_sampled(t, 1.0));
        assert!(!ratio_sampled(t, 0.0));
        assert!(!ratio_sampled(t, 0.5), "the top of the range is past half");
        assert!(ratio_sampled(TraceId::from_bytes([0; 16]), 0.01));
    }

    #[test]
    fn http_endpoint_gets_the_traces_path() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("http://c:4318/custom"),
            "http://c:4318/custom"
        );
    }
}
