// The "how to connect" lines the CLI and the demo print once the server listens: one nbdinfo, nbd-client
// and qemu-img line per address, for the default export and, when there are several, per name. Pure.
import type { ListenAddress } from './listen-address.js';

function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:=@%+,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The NBD URI (as libnbd, qemu and fio take it) of an export at an address. */
export function exportUri(address: ListenAddress, exportName: string): string {
  const name = encodeURIComponent(exportName);
  if (address.kind === 'unix') return `nbd+unix:///${name}?socket=${address.path}`;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `nbd://${host}:${address.port}/${name}`;
}

export function connectHints(address: ListenAddress, exportName: string): string[] {
  const uri = shellQuote(exportUri(address, exportName));
  const nbdClient =
    address.kind === 'unix'
      ? `nbd-client -unix ${shellQuote(address.path)} /dev/nbd0 -name ${shellQuote(exportName)}`
      : `nbd-client ${address.host} ${address.port} /dev/nbd0 -name ${shellQuote(exportName)}`;
  return [
    `nbdinfo ${uri}`,
    `qemu-img info ${uri}`,
    `sudo modprobe nbd && sudo ${nbdClient}   # kernel block device; detach: sudo nbd-client -d /dev/nbd0`,
  ];
}
