/**
 * The shape of the cluster config file (SPEC §4.1), as a zod schema. Strict everywhere: an
 * unknown key is an error (a typo in a timing must not silently fall back to a default).
 */
import { z } from 'zod';
import { CLUSTER_ID_PATTERN, DATASTORE_NAME_PATTERN, HOST_ID_PATTERN } from '@vigil/core';
import type { Timing } from '@vigil/core';
import { DEFAULT_TIMING } from './profiles.js';
import { ISOLATION_RESPONSES } from './types.js';

const ipAddress = z.union([z.ipv4(), z.ipv6()], { error: 'must be an IPv4 or IPv6 address (no host names: the agent must not depend on DNS)' });
const port = z.number().int().min(1).max(65535);
const dsName = z.string().regex(DATASTORE_NAME_PATTERN, 'datastore names are 1-64 of A-Z a-z 0-9 . _ - and start with a letter or digit');
const positiveMs = z.number().int('must be a whole number of milliseconds').positive('must be > 0').max(7 * 24 * 3600 * 1000, 'must be at most 7 days');

const timingOverrides = Object.fromEntries(
  (Object.keys(DEFAULT_TIMING) as (keyof Timing)[]).map((k) => [
    k,
    k === 'restartRetryDelaysMs' ? z.array(positiveMs).max(10, 'at most 10 retries').optional() : positiveMs.optional(),
  ]),
) as unknown as Record<keyof Timing, z.ZodOptional<z.ZodType>>;

export const hostSchema = z.strictObject({
  address: ipAddress,
  port: port.optional(),
  datastores: z.array(dsName).optional(),
  isolationAddresses: z.array(ipAddress).max(10, 'at most 10 isolation addresses').optional(),
  capacity: z
    .strictObject({
      memoryMB: z.number().int().positive().max(2 ** 31, 'at most 2^31 MB'),
      cpus: z.number().int().positive().max(1_000_000, 'at most 1,000,000'),
    })
    .optional(),
});

export const configSchema = z.strictObject({
  cluster: z.string().regex(CLUSTER_ID_PATTERN, 'cluster ids are 1-64 of A-Z a-z 0-9 . _ - and start with a letter or digit'),
  secretFile: z.string().startsWith('/', 'must be an absolute path'),
  port: port.default(8182),
  hosts: z
    .record(z.string().regex(HOST_ID_PATTERN, 'host ids have the form host-N (N: 1-9 digits)'), hostSchema)
    .refine((h) => Object.keys(h).length > 0, 'at least one host is required')
    .refine((h) => Object.keys(h).length <= 1024, 'at most 1024 hosts'),
  datastores: z
    .record(dsName, z.string().startsWith('/', 'datastore paths must be absolute'))
    .refine((d) => Object.keys(d).length <= 256, 'at most 256 datastores'),
  heartbeatDatastores: z.array(dsName).min(1).max(5, 'at most 5 heartbeat datastores (FDM range 2-5)').optional(),
  isolationAddresses: z.array(ipAddress).max(10, 'at most 10 isolation addresses').optional(),
  pingHosts: z.boolean().default(true),
  isolationResponse: z.enum(ISOLATION_RESPONSES as [string, ...string[]]).default('leavePoweredOn'),
  driver: z
    .discriminatedUnion('type', [
      z.strictObject({ type: z.literal('process') }),
      z.strictObject({ type: z.literal('libvirt'), uri: z.string().min(1).default('qemu:///system') }),
    ])
    .default({ type: 'process' }),
  timing: z
    .strictObject({ profile: z.enum(['default', 'fast', 'fdm']).default('default'), ...timingOverrides })
    .default({ profile: 'default' }),
  restart: z
    .strictObject({
      maxConcurrentPerHost: z.number().int().min(1).max(1024).default(32),
      maxAttempts: z.number().int().min(1).max(11).default(5),
      nextPriorityWhen: z.enum(['allocated', 'poweredOn']).default('allocated'),
    })
    .default({ maxConcurrentPerHost: 32, maxAttempts: 5, nextPriorityWhen: 'allocated' }),
  log: z
    .strictObject({
      level: z.enum(['error', 'warn', 'info', 'debug']).default('info'),
      format: z.enum(['json', 'text']).default('json'),
    })
    .default({ level: 'info', format: 'json' }),
});

export type RawConfig = z.infer<typeof configSchema>;
