//! A unary reply keeps its share of the read budget (`limits.read_memory_bytes`, see
//! `core::Held`) until it has been written out, not only until the handler returns: tonic
//! encodes the reply after the handler, into one buffer as large as the reply, and HTTP/2
//! sends that buffer as fast as the client reads.
//!
//! The handler puts the reservation in the response's extensions ([`holding`]);
//! [`HoldReplyMemoryLayer`] moves it into the response body, which gives it back when the
//! body is dropped. The body hands the encoded reply to HTTP/2 in pieces of
//! [`PIECE`] bytes: hyper asks for the next piece only once HTTP/2's send buffer for the
//! stream has room, so the body ends (and the reservation is given back) when all but the
//! last piece or so has gone to the socket, rather than when the whole reply was queued.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::http;

use crate::core::Held;
use crate::mvcc::Reservation;

/// What the body hands to HTTP/2 at a time (cutting a `Bytes` copies nothing).
const PIECE: usize = 256 * 1024;

/// A reply's reservation in the response extensions (which must be `Clone`); given back
/// when the last clone is dropped.
#[derive(Clone)]
struct HeldMemory {
    _reservation: Arc<Reservation>,
}

/// The gRPC response for `held`, carrying its reservation to [`HoldReplyMemoryLayer`].
pub fn holding<T>(held: Held<T>) -> tonic::Response<T> {
    let mut resp = tonic::Response::new(held.reply);
    if held.memory.held() > 0 {
        resp.extensions_mut().insert(HeldMemory {
            _reservation: Arc::new(held.memory),
        });
    }
    resp
}

#[derive(Debug, Clone, Copy, Default)]
pub struct HoldReplyMemoryLayer;

impl<S> tower::Layer<S> for HoldReplyMemoryLayer {
    type Service = HoldReplyMemory<S>;

    fn layer(&self, inner: S) -> HoldReplyMemory<S> {
        HoldReplyMemory { inner }
    }
}

#[derive(Debug, Clone)]
pub struct HoldReplyMemory<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for HoldReplyMemory<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = http::Response<HeldBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<HeldBody<R>>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let answer = self.inner.call(req);
        Box::pin(async move {
            let mut resp = answer.await?;
            let memory = resp.extensions_mut().remove::<HeldMemory>();
            Ok(resp.map(|inner| HeldBody {
                inner,
                rest: Bytes::new(),
                memory,
            }))
        })
    }
}

/// A response body that holds a reply's reservation (if any) until it is dropped, and
/// then hands its data out in pieces.
pub struct HeldBody<R> {
    inner: R,
    /// What is left of the data frame being handed out.
    rest: Bytes,
    memory: Option<HeldMemory>,
}

impl<R: Body<Data = Bytes> + Unpin> Body for HeldBody<R> {
    type Data = Bytes;
    type Error = R::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, R::Error>>> {
        let this = self.get_mut();
        if this.memory.is_none() {
            return Pin::new(&mut this.inner).poll_frame(cx);
        }
        if this.rest.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                other => return other,
            }
        }
        let piece = this.rest.split_to(this.rest.len().min(PIECE));
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::ReadBudget;

    /// A body of the given data frames.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn poll<B: Body<Data = Bytes> + Unpin>(b: &mut B) -> Option<Bytes> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match Pin::new(b).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => f.into_data().ok(),
            Poll::Ready(None) => None,
            _ => panic!("frames are always ready"),
        }
    }

    #[test]
    fn the_reservation_is_held_until_the_body_is_dropped_and_data_goes_out_in_pieces() {
        let budget = ReadBudget::new(8 << 20);
        let mut memory = budget.reservation();
        assert!(memory.charge(3 << 20));
        let reply = Bytes::from(vec![7u8; 2 * PIECE + 10]);
        let mut body = HeldBody {
            inner: Frames([reply.clone()].into()),
            rest: Bytes::new(),
            memory: Some(HeldMemory {
                _reservation: Arc::new(memory),
            }),
        };
        let mut out = Vec::new();
        while let Some(piece) = poll(&mut body) {
            assert!(piece.len() <= PIECE);
            out.extend_from_slice(&piece);
            assert_eq!(budget.in_use(), 3 << 20, "held while the body is read");
        }
        assert_eq!(out, reply);
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_body_without_a_reservation_passes_frames_through_whole() {
        let reply = Bytes::from(vec![1u8; 2 * PIECE]);
        let mut body = HeldBody {
            inner: Frames([reply.clone()].into()),
            rest: Bytes::new(),
            memory: None,
        };
        assert_eq!(poll(&mut body), Some(reply));
        assert_eq!(poll(&mut body), None);
    }
}
