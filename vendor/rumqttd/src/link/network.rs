use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::timeout,
};

use std::{
    collections::VecDeque,
    io::{self, ErrorKind},
};
use tokio::time::{error::Elapsed, Duration};

use crate::protocol::{self, Packet, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O = {0}")]
    Io(#[from] io::Error),
    #[error("Invalid data = {0}")]
    Protocol(#[from] protocol::Error),
    #[error["Keep alive timeout"]]
    KeepAlive(#[from] Elapsed),
    /// Breakwater patch 19: the peer did not take what the broker wrote to it within the write
    /// timeout (see [`Network::set_keepalive`]).
    #[error("Write timeout: the peer has not read for {0:?}")]
    WriteTimeout(Duration),
}

/// Network transforms packets <-> frames efficiently. It takes
/// advantage of pre-allocation, buffering and vectorization when
/// appropriate to achieve performance
pub struct Network<P> {
    /// Socket for IO
    socket: Box<dyn N>,
    /// Buffered reads
    read: BytesMut,
    /// Buffered writes
    write: BytesMut,
    /// Maximum packet size
    max_incoming_size: usize,
    /// Maximum connection buffer count. TODO: Change this to use bytes for deterministicness
    max_connection_buffer_len: usize,
    /// Keep alive timeout
    keepalive: Duration,
    /// Breakwater patch 19: the longest a write may wait for the peer to read.
    write_timeout: Duration,
    /// Protocol
    protocol: P,
}

/// Breakwater patch 13: initial capacity of a connection's write buffer, bytes.
const WRITE_BUFFER_INITIAL_CAPACITY: usize = 1024;

/// Breakwater patch 19: the write timeout of a connection without a keepalive (before its
/// CONNECT, or with keepalive 0).
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

impl<P: Protocol> Network<P> {
    pub fn new(
        socket: Box<dyn N>,
        max_incoming_size: usize,
        max_connection_buffer_len: usize,
        protocol: P,
    ) -> Network<P> {
        Network {
            socket,
            read: BytesMut::with_capacity(10 * 1024),
            // Breakwater patch 13: grows on demand (`Protocol::write` reserves what a packet
            // needs, and `clear` keeps the capacity). 10 KiB up front cost every connection a
            // resident page although most only ever write a few acks of a few dozen bytes.
            write: BytesMut::with_capacity(WRITE_BUFFER_INITIAL_CAPACITY),
            max_incoming_size,
            max_connection_buffer_len,
            // Overwritten by keepalive value in connect packet, otherwise we
            // would wait indefinitely until we get a packet / network error
            // when we call read.
            keepalive: Duration::MAX,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            protocol,
        }
    }

    /// Also sets the write timeout (Breakwater patch 19) to the same 1.5 x keepalive: a client
    /// that has not read what it was sent for that long is as gone as one that has sent
    /// nothing. Keepalive 0 leaves the default write timeout (60 s).
    pub fn set_keepalive(&mut self, keepalive: u16) {
        // Breakwater patch 17: keep alive 0 turns the mechanism off (MQTT 3.1.1, 3.1.2.10).
        if keepalive == 0 {
            self.keepalive = Duration::MAX;
            return;
        }
        let keepalive = Duration::from_secs(keepalive as u64);
        self.keepalive = keepalive + keepalive.mul_f32(0.5);
        self.write_timeout = self.keepalive;
    }

    /// Breakwater patch 19: writes the write buffer out, waiting at most the write timeout for
    /// the peer to take it. A peer that does not read its socket fills the kernel's buffers,
    /// and then a write waits: the connection's link writes and reads in turn, so it stops
    /// reading from that peer meanwhile (backpressure). Past the timeout the connection ends
    /// ([`Error::WriteTimeout`], counted as `rumqttd_connections_closed_total{reason=
    /// "write_timeout"}`, patch 17).
    async fn flush_write_buffer(&mut self) -> Result<(), Error> {
        match timeout(self.write_timeout, self.socket.write_all(&self.write)).await {
            Ok(written) => written?,
            Err(_) => return Err(Error::WriteTimeout(self.write_timeout)),
        }
        self.write.clear();
        Ok(())
    }

    /// Reads more than 'required' bytes to frame a packet into self.read buffer
    async fn read_bytes(&mut self, required: usize) -> io::Result<usize> {
        // TODO: Fix this cancellation bug and write unit test
        let mut total_read = 0;
        loop {
            let read = self.socket.read_buf(&mut self.read).await?;
            if 0 == read {
                let error = if self.read.is_empty() {
                    io::Error::new(ErrorKind::ConnectionAborted, "connection closed by peer")
                } else {
                    io::Error::new(ErrorKind::ConnectionReset, "connection reset by peer")
                };

                return Err(error);
            }

            total_read += read;
            if total_read >= required {
                return Ok(total_read);
            }
        }
    }

    /// Breakwater patch 5: resolves when the peer closes the connection or it fails, and never
    /// otherwise. Whatever the peer sends meanwhile is kept in the read buffer (up to
    /// `max_incoming_size`, then it stops reading), so a later [`Network::read`] still sees it.
    ///
    /// Cancel safe: a `read_buf` that did not complete has read nothing; bytes that were read
    /// stay buffered. Meant for `select!` next to work that only matters while the peer waits
    /// for it, such as the authentication of its CONNECT.
    pub async fn closed(&mut self) -> io::Error {
        while self.read.len() < self.max_incoming_size {
            match self.socket.read_buf(&mut self.read).await {
                Ok(0) => {
                    return io::Error::new(ErrorKind::ConnectionAborted, "connection closed by peer")
                }
                Ok(_) => {}
                Err(e) => return e,
            }
        }
        std::future::pending().await
    }

    /// Waits on network for 1 packet
    pub async fn read(&mut self) -> Result<Packet, Error> {
        loop {
            let required = match Protocol::read_mut(
                &mut self.protocol,
                &mut self.read,
                self.max_incoming_size,
            ) {
                Ok(packet) => return Ok(packet),
                Err(protocol::Error::InsufficientBytes(required)) => required,
                Err(e) => return Err(e.into()),
            };

            // read more packets until a frame can be created. This function
            // blocks until a frame can be created. Use this in a select! branch
            timeout(self.keepalive, self.read_bytes(required)).await??;
        }
    }

    /// Read packets in bulk. This allow replies to be in bulk. This method is used
    /// after the connection is established to read a bunch of incoming packets
    pub fn readv(&mut self, packets: &mut VecDeque<Packet>) -> Result<usize, Error> {
        loop {
            match self
                .protocol
                .read_mut(&mut self.read, self.max_incoming_size)
            {
                Ok(packet) => {
                    packets.push_back(packet);
                    let connection_buffer_length = packets.len();
                    if connection_buffer_length >= self.max_connection_buffer_len {
                        return Ok(connection_buffer_length);
                    }
                }
                Err(protocol::Error::InsufficientBytes(_)) => return Ok(packets.len()),
                Err(e) => return Err(io::Error::new(ErrorKind::InvalidData, e.to_string()).into()),
            }
        }
    }

    pub async fn write(&mut self, packet: Packet) -> Result<(), Error> {
        Protocol::write(&self.protocol, packet, &mut self.write)?;
        // Breakwater patch 19: bounded in time.
        self.flush_write_buffer().await
    }

    pub async fn writev(&mut self, packets: VecDeque<Packet>) -> Result<(), Error> {
        for packet in packets {
            Protocol::write(&self.protocol, packet, &mut self.write)?;
        }
        // Breakwater patch 19: bounded in time.
        self.flush_write_buffer().await
    }
}

pub trait N: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T> N for T where T: AsyncRead + AsyncWrite + Unpin + Send {}
