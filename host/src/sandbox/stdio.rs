//! Bounded capture of a guest's stdout and stderr.
//!
//! wasmtime-wasi's `MemoryOutputPipe` reports overflow with an untyped message;
//! this pipe instead traps with [`SandboxError::OutputLimit`] so the run is
//! classified as `output_limit` by type, and it never stalls a writer (a pipe
//! that offers zero bytes of capacity would spin `blocking_write_and_flush`).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use super::SandboxError;

/// Largest chunk offered to a writer at once.
const CHUNK: usize = 64 * 1024;

/// A capture buffer with a hard capacity, shared between the WASI context and
/// the executor that reads it after the run.
#[derive(Clone)]
pub(crate) struct BoundedPipe {
    name: &'static str,
    capacity: usize,
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl BoundedPipe {
    pub(crate) fn new(name: &'static str, capacity: u64) -> Self {
        Self {
            name,
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
            buffer: Arc::default(),
        }
    }

    /// What was written, as lossy UTF-8.
    pub(crate) fn contents(&self) -> String {
        let buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn append(&self, bytes: &[u8]) -> Result<(), SandboxError> {
        let mut buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if bytes.len() > self.capacity.saturating_sub(buf.len()) {
            // Keep what fits, so the envelope shows the beginning of the flood.
            let room = self.capacity.saturating_sub(buf.len());
            buf.extend_from_slice(&bytes[..room]);
            return Err(SandboxError::OutputLimit {
                what: self.name,
                limit: self.capacity as u64,
            });
        }
        buf.extend_from_slice(bytes);
        Ok(())
    }
}

impl IsTerminal for BoundedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for BoundedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for BoundedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for BoundedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes)
            .map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always offer a chunk: the write that crosses the limit traps.
        Ok(CHUNK)
    }
}

impl tokio::io::AsyncWrite for BoundedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(
            self.append(buf)
                .map(|()| buf.len())
                .map_err(std::io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
