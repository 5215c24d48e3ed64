/**
 * Structured logging with winston: one line per decision, with its reason. JSON lines by default
 * (for journald / log shippers), or a compact text format for people.
 */
import winston from 'winston';
import type { LogLevel } from '@vigil/core';

export interface Logger {
  log(level: LogLevel, event: string, message: string, fields?: Record<string, unknown>): void;
  close(): Promise<void>;
}

export interface LoggerOptions {
  host: string;
  cluster: string;
  level: LogLevel;
  format: 'json' | 'text';
  /** Also append to this file. */
  file?: string;
}

export function createLogger(opts: LoggerOptions): Logger {
  const base = { host: opts.host, cluster: opts.cluster };
  const text = winston.format.printf((info) => {
    const { level, message, timestamp, event, host, cluster: _c, ...rest } = info as Record<string, unknown>;
    const extra = Object.keys(rest).length ? ' ' + JSON.stringify(rest) : '';
    return `${String(timestamp)} ${String(host)} ${String(level).toUpperCase().padEnd(5)} ${String(event)}: ${String(message)}${extra}`;
  });
  const format = winston.format.combine(winston.format.timestamp(), opts.format === 'json' ? winston.format.json() : text);
  const transports: winston.transport[] = [new winston.transports.Stream({ stream: process.stdout })];
  if (opts.file) transports.push(new winston.transports.File({ filename: opts.file }));
  const w = winston.createLogger({ level: opts.level, defaultMeta: base, format, transports });
  return {
    log(level, event, message, fields = {}) {
      w.log({ level, message, event, ...fields });
    },
    close() {
      return new Promise((resolve) => {
        w.on('finish', () => resolve());
        w.end();
        setTimeout(resolve, 500).unref();
      });
    },
  };
}
