/**
 * The one error type of everything that reads checkpoint files (safetensors, Hugging Face
 * and PEFT folders, configs, tokenizers). Messages name files relative to the checkpoint
 * folder, never a server path: they reach clients as they are.
 */

/** A checkpoint file or folder that does not follow its format. `reason` is a stable code. */
export class CheckpointFormatError extends Error {
  readonly reason: string = "CHECKPOINT_FORMAT_INVALID";
  /** The file at fault, relative to the checkpoint folder, once known. */
  file?: string;

  constructor(message: string, file?: string) {
    super(message);
    this.name = new.target.name;
    if (file !== undefined) this.inFile(file);
  }

  /** Names the file at fault ("config.json: ..."), unless a reader closer to it already did. */
  inFile(file: string): this {
    if (this.file === undefined) {
      this.file = file;
      this.message = `${file}: ${this.message}`;
    }
    return this;
  }
}

/** A checkpoint of another kind than the call needs: a moderation model where a language model goes, or the reverse. */
export class CheckpointKindError extends CheckpointFormatError {
  override readonly reason: string = "CHECKPOINT_KIND_INVALID";
}

/**
 * A file system error met while reading `file` (a relative name) as a format error: the
 * Node message holds the absolute path, so only the code is kept. Other errors pass through.
 */
export function fileReadError(err: unknown, file: string): unknown {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (typeof code !== "string") return err;
  if (code === "ENOENT") return missingFile(file);
  const why = code === "EISDIR" ? "is a folder, not a file" : code === "ENOTDIR" ? "is not inside a folder" : `cannot be read (${code})`;
  return new CheckpointFormatError(why, file);
}

/** "missing <file>": the file is named once. */
export function missingFile(file: string): CheckpointFormatError {
  const err = new CheckpointFormatError(`missing ${file}`);
  err.file = file;
  return err;
}
