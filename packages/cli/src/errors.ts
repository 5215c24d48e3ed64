/** Exit codes: 0 ok, 1 runtime failure (agent unreachable...), 2 bad usage or invalid input. */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

export class CliError extends Error {
  constructor(message: string, readonly exitCode: number = EXIT_FAILURE) {
    super(message);
    this.name = 'CliError';
  }
}
