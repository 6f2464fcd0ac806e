// Download progress for the demo: a cli-progress bar on a terminal, a plain line per 20 % otherwise
// (so that piped or CI output stays readable).
import cliProgress from 'cli-progress';

export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}

export function formatMs(ms) {
  return ms < 1000 ? `${ms.toFixed(ms < 10 ? 2 : 0)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/**
 * Returns `{ onProgress, stop }`: pass `onProgress` to `httpFetcher`, call `stop()` when the download is
 * over (it prints nothing if no byte arrived, as on a cache hit).
 */
export function createProgress(stream = process.stdout) {
  const startedAt = performance.now();
  const rate = (received) => `${formatBytes(received / ((performance.now() - startedAt) / 1000 || 1))}/s`;
  let bar;
  let printedSteps = 0;

  const onProgress = ({ receivedBytes, totalBytes }) => {
    const payload = { received: formatBytes(receivedBytes), size: formatBytes(totalBytes ?? 0) };
    if (stream.isTTY && totalBytes !== undefined) {
      if (!bar) {
        bar = new cliProgress.SingleBar(
          {
            format: '  {bar} {percentage}% | {received} / {size} | {rate} | ETA {eta_formatted}',
            barsize: 30,
            hideCursor: true,
            stream,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(totalBytes, 0, { ...payload, rate: '' });
      }
      bar.update(receivedBytes, { ...payload, rate: rate(receivedBytes) });
      return;
    }
    const fraction = totalBytes ? receivedBytes / totalBytes : 0;
    const steps = Math.floor(fraction * 5);
    if (totalBytes === undefined || steps <= printedSteps) return;
    printedSteps = steps;
    stream.write(
      `  ${String(Math.round(fraction * 100)).padStart(3)} %  ${payload.received} / ${payload.size}  ${rate(receivedBytes)}\n`,
    );
  };

  return { onProgress, stop: () => bar?.stop() };
}
