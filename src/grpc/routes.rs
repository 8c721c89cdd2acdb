//! The gRPC port's other services (health, reflection, UNIMPLEMENTED for unknown paths):
//! tonic's router, called on a task of its own per call, since a health `Watch` streams for as
//! long as the client listens and reflection is a bidirectional stream. The request's body
//! reaches the task over a small channel; the response's head, data and trailers come back to
//! the connection over the connection's outbox, and the connection writes them as the
//! client's window allows. The client's RST_STREAM, or the connection's end, aborts the task.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use http_body_util::BodyExt;
use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderMap};
use tonic::service::Routes;

use super::http2::session::RequestHead;

/// DATA frames a routed call may have unread before its stream is reset: its requests are
/// a few bytes each, and a client that floods one is not buffered without bound.
const BODY_FRAMES: usize = 16;

/// A piece of a routed call's response, for the connection to write.
#[derive(Debug)]
pub(super) enum Out {
    /// The head; `end` when there is no body.
    Head(http::response::Parts, bool),
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body ended without trailers.
    End,
    /// The body failed outright (tonic's bodies carry a failed call's status in trailers).
    Failed,
}

/// Where a connection's routed calls send their responses, with their stream's id.
pub(super) type Outbox = mpsc::UnboundedSender<(u32, Out)>;

/// What the connection keeps of a routed call.
#[derive(Debug)]
pub(super) struct Routed {
    body: Option<mpsc::Sender<Bytes>>,
    task: AbortHandle,
}

impl Routed {
    /// Starts a call of `head` on `routes`; `end` when the request has no body.
    pub(super) fn start(
        routes: Routes,
        stream: u32,
        head: RequestHead,
        end: bool,
        outbox: Outbox,
    ) -> Routed {
        let (sender, receiver) = mpsc::channel(BODY_FRAMES);
        let mut request = http::Request::new(ChannelBody(receiver));
        *request.method_mut() =
            http::Method::from_bytes(head.method.as_bytes()).unwrap_or(http::Method::POST);
        // The router reads the path; an unparsable one still reaches it (as "/") and is
        // answered UNIMPLEMENTED.
        let mut uri = http::Uri::builder().scheme(head.scheme.as_str());
        if let Some(authority) = &head.authority {
            uri = uri.authority(authority.as_str());
        }
        *request.uri_mut() = uri
            .path_and_query(head.path.as_str())
            .build()
            .or_else(|_| head.path.parse())
            .unwrap_or_default();
        *request.version_mut() = http::Version::HTTP_2;
        if let Some(headers) = head.headers {
            *request.headers_mut() = headers;
        }
        let task = tokio::spawn(call(routes, request, stream, outbox)).abort_handle();
        Routed {
            body: (!end).then_some(sender),
            task,
        }
    }

    /// Passes request body bytes on; `Err` when the call has left too many unread.
    pub(super) fn push(&mut self, data: Bytes, end: bool) -> Result<(), ()> {
        if let Some(body) = &self.body
            && !data.is_empty()
        {
            match body.try_send(data) {
                Ok(()) => {}
                // The call finished without reading all of it: nothing more to pass on.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(_)) => return Err(()),
            }
        }
        if end {
            self.body = None;
        }
        Ok(())
    }

    /// Ends the call (its stream was reset, or the connection is gone).
    pub(super) fn abort(&self) {
        self.task.abort();
    }
}

async fn call(
    mut routes: Routes,
    request: http::Request<ChannelBody>,
    stream: u32,
    outbox: Outbox,
) {
    let ready = std::future::poll_fn(|cx| {
        <Routes as Service<http::Request<ChannelBody>>>::poll_ready(&mut routes, cx)
    });
    let response = match ready.await {
        Ok(()) => routes.call(request).await,
        Err(e) => Err(e),
    };
    let response = match response {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (head, mut body) = response.into_parts();
    let empty = body.is_end_stream();
    if outbox.send((stream, Out::Head(head, empty))).is_err() || empty {
        return;
    }
    loop {
        let out = match body.frame().await {
            None => Out::End,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => Out::Data(data),
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => Out::Trailers(trailers),
                    // A frame kind http_body may add later: nothing to write.
                    Err(_) => continue,
                },
            },
            Some(Err(status)) => {
                tracing::debug!(%status, "a gRPC response body failed");
                Out::Failed
            }
        };
        let last = !matches!(out, Out::Data(_));
        if outbox.send((stream, out)).is_err() || last {
            return;
        }
    }
}

/// A routed call's request body: the DATA the connection passed on, until END_STREAM.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|data| data.map(|d| Ok(Frame::data(d))))
    }
}
