//! A connection's stream with its per-address slot attached: the slot is given back when
//! rumqttd drops the stream (the connection ended, however it ended).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::peer::ConnectionGuard;

struct Tracked<S> {
    inner: S,
    _slot: ConnectionGuard,
}

/// `stream` for rumqttd, holding `slot` for as long as it lives.
pub(super) fn tracked<S>(
    stream: S,
    slot: ConnectionGuard,
    identity: Option<String>,
    peer: Option<std::net::SocketAddr>,
) -> rumqttd::hooks::Transport
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    rumqttd::hooks::Transport {
        stream: Box::new(Tracked {
            inner: stream,
            _slot: slot,
        }),
        identity,
        peer,
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
