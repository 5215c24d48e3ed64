/**
 * The one error type this package throws. Only the sending side throws (encode, deriveKey,
 * SendSequence): a caller bug or a misconfiguration. The receiving side (decode) never throws.
 */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}
