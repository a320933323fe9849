// Test PKI made at run time with Debian's openssl: CAs, server and client certificates
// (EC P-256, a day long), each as PEM files in a temp folder.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface KeyPair {
  cert: string;
  key: string;
  /** PEM contents, for clients that take bytes rather than paths. */
  certPem: Buffer;
  keyPem: Buffer;
}

const openssl = (args: string[]) => execFileSync("openssl", args, { stdio: "pipe" });

export class TestPki {
  readonly dir = mkdtempSync(join(tmpdir(), "vaccine-pki-"));
  private serial = 1;

  private pair(name: string): KeyPair {
    const cert = join(this.dir, `${name}.pem`);
    const key = join(this.dir, `${name}.key`);
    return {
      cert,
      key,
      get certPem() {
        return readFileSync(cert);
      },
      get keyPem() {
        return readFileSync(key);
      },
    };
  }

  ca(name: string): KeyPair {
    const p = this.pair(name);
    openssl([
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", p.key, "-out", p.cert, "-days", "1", "-subj", `/CN=${name}`,
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    return p;
  }

  /**
   * A leaf signed by `ca`: `sans` like ["DNS:localhost", "IP:127.0.0.1", "URI:spiffe://t/a"];
   * `expired`: valid for a day in 2020 (openssl ca, the one command here that takes dates).
   */
  leaf(name: string, ca: KeyPair, options: { cn: string; sans?: string[]; usage: "serverAuth" | "clientAuth"; expired?: boolean }): KeyPair {
    const p = this.pair(name);
    const csr = join(this.dir, `${name}.csr`);
    const ext = join(this.dir, `${name}.ext`);
    writeFileSync(ext, [
      "basicConstraints=CA:FALSE",
      `extendedKeyUsage=${options.usage}`,
      ...(options.sans?.length ? [`subjectAltName=${options.sans.join(",")}`] : []),
    ].join("\n") + "\n");
    openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", p.key, "-out", csr, "-subj", `/CN=${options.cn}`]);
    if (options.expired) {
      const db = join(this.dir, `${name}-ca`);
      mkdirSync(db);
      writeFileSync(join(db, "index.txt"), "");
      writeFileSync(join(db, "serial"), `${String(this.serial++).padStart(2, "0")}\n`);
      writeFileSync(join(db, "ca.cnf"), `[ca]\ndefault_ca=d\n[d]\ndatabase=${db}/index.txt\nnew_certs_dir=${db}\nserial=${db}/serial\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n`);
      openssl(["ca", "-batch", "-config", join(db, "ca.cnf"), "-cert", ca.cert, "-keyfile", ca.key, "-in", csr, "-out", p.cert, "-extfile", ext, "-startdate", "20200101000000Z", "-enddate", "20200102000000Z"]);
    } else {
      openssl(["x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial", String(this.serial++), "-days", "1", "-out", p.cert, "-extfile", ext]);
    }
    return p;
  }

  close(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The SHA-256 fingerprint of a PEM certificate, as openssl prints it. */
export function fingerprint(certFile: string): string {
  return execFileSync("openssl", ["x509", "-in", certFile, "-noout", "-fingerprint", "-sha256"], { encoding: "utf8" }).trim().split("=")[1];
}
