//! The gRPC port's other services (health, reflection, UNIMPLEMENTED for unknown paths):
//! tonic's router called with an h2 stream's request, its response written back to the
//! stream. Each call runs on a task of its own, since a health `Watch` streams for as long as
//! the client listens; the client's RST_STREAM ends it.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use prost::bytes::Bytes;
use tonic::codegen::{Service, http};
use tonic::service::Routes;

/// Answers one request through `routes`.
pub(super) async fn serve(
    mut routes: Routes,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let request = request.map(RecvBody::new);
    let ready =
        poll_fn(|cx| <Routes as Service<http::Request<RecvBody>>>::poll_ready(&mut routes, cx));
    let response = match ready.await {
        Ok(()) => routes.call(request).await,
        Err(e) => Err(e),
    };
    let response = match response {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if let Err(e) = write(&mut respond, response).await {
        tracing::debug!(error = %e, "a gRPC response was cut short: the stream is gone");
    }
}

/// Writes the response's head, its body as DATA frames as the peer's window allows, then its
/// trailers; stops when the peer resets the stream.
async fn write(
    respond: &mut SendResponse<Bytes>,
    response: http::Response<tonic::body::Body>,
) -> Result<(), h2::Error> {
    let (head, body) = response.into_parts();
    let empty = body.is_end_stream();
    let mut stream = respond.send_response(http::Response::from_parts(head, ()), empty)?;
    if empty {
        return Ok(());
    }
    let mut body = pin!(body);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // A health Watch has no end of its own: the client's cancel is its end.
            _ = poll_fn(|cx| stream.poll_reset(cx)) => return Ok(()),
        };
        match frame {
            None => return stream.send_data(Bytes::new(), true),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => send_data(&mut stream, data).await?,
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return stream.send_trailers(trailers);
                    }
                }
            },
            // tonic's bodies carry a failed call's status in their trailers; an error here
            // is the body failing outright.
            Some(Err(status)) => {
                tracing::debug!(%status, "a gRPC response body failed");
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return Ok(());
            }
        }
    }
}

/// Sends `data` in pieces as flow control grants capacity, so a large reflection answer
/// waits for the peer's window instead of piling up in the send buffer.
async fn send_data(stream: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(granted)) => {
                let piece = data.split_to(granted.min(data.len()));
                if !piece.is_empty() {
                    stream.send_data(piece, false)?;
                }
            }
            Some(Err(e)) => return Err(e),
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        }
    }
    Ok(())
}

/// An h2 request body as an `http_body::Body`, giving each DATA frame's bytes back to the
/// flow-control window as it is read.
pub(super) struct RecvBody {
    stream: RecvStream,
    data_done: bool,
    done: bool,
}

impl RecvBody {
    pub(super) fn new(stream: RecvStream) -> Self {
        RecvBody {
            stream,
            data_done: false,
            done: false,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Released at once: the message is small and read right away, and a
                    // window that is never given back would stall the connection.
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        let trailers = ready!(this.stream.poll_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
