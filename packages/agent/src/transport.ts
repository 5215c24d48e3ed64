/**
 * The network edge, memberlist-style: the agent sends and receives opaque datagrams through this
 * interface; the UDP implementation binds the host's configured address and port.
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';

export interface Datagram {
  data: Buffer;
  address: string;
  port: number;
}

/** Datagram counters since the transport was bound (`vigil status --json`, the scale benchmark). */
export interface DatagramStats {
  sent: number;
  received: number;
  sentBytes: number;
  receivedBytes: number;
  /** Largest datagram sent / received, in bytes. */
  largestSent: number;
  largestReceived: number;
}

export interface Transport {
  send(address: string, port: number, data: Buffer): void;
  onDatagram(handler: (d: Datagram) => void): void;
  close(): Promise<void>;
  /** Counters, if the transport keeps them. */
  stats?(): DatagramStats;
}

export class UdpTransport implements Transport {
  private handler: (d: Datagram) => void = () => {};
  private readonly counters: DatagramStats = { sent: 0, received: 0, sentBytes: 0, receivedBytes: 0, largestSent: 0, largestReceived: 0 };

  private constructor(private readonly socket: Socket, private readonly onError: (err: Error) => void) {
    socket.on('message', (data, rinfo) => {
      const c = this.counters;
      c.received++;
      c.receivedBytes += data.length;
      if (data.length > c.largestReceived) c.largestReceived = data.length;
      this.handler({ data, address: rinfo.address, port: rinfo.port });
    });
    socket.on('error', (err) => this.onError(err));
  }

  /** Bind `address:port`. Rejects (EADDRINUSE, EADDRNOTAVAIL...) so the agent can refuse to start. */
  static bind(address: string, port: number, onError: (err: Error) => void): Promise<UdpTransport> {
    const socket = createSocket({ type: isIPv6(address) ? 'udp6' : 'udp4', reuseAddr: false });
    return new Promise((resolve, reject) => {
      const fail = (err: Error) => reject(err);
      socket.once('error', fail);
      socket.bind({ address, port, exclusive: true }, () => {
        socket.off('error', fail);
        resolve(new UdpTransport(socket, onError));
      });
    });
  }

  send(address: string, port: number, data: Buffer): void {
    const c = this.counters;
    c.sent++;
    c.sentBytes += data.length;
    if (data.length > c.largestSent) c.largestSent = data.length;
    // Errors (EHOSTUNREACH, ENETUNREACH while isolated...) are expected; heartbeats repeat.
    this.socket.send(data, port, address, (err) => {
      if (err) this.onError(err);
    });
  }

  onDatagram(handler: (d: Datagram) => void): void {
    this.handler = handler;
  }

  stats(): DatagramStats {
    return { ...this.counters };
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}
