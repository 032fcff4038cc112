// Builds the web console into ./dist (git-ignored): our own sources from ./src, bundled with the
// npm packages that the repository's package-lock.json pins (run `npm ci` first). Nothing in the
// output is fetched at run time: the console works offline.
//
// Usage: node src/openkvs/web/console/build.mjs [outdir]
import { copyFile, mkdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../../../..');
const out = path.resolve(process.argv[2] || path.join(here, 'dist'));
const require = createRequire(path.join(root, 'package.json'));
let esbuild;
try {
    esbuild = require('esbuild');
} catch (e) {
    console.error(`esbuild is not installed: run \`npm ci\` in ${root} first (${e.message})`);
    process.exit(1);
}

// The KVS WebRTC SDK reads its version from process.env (its own webpack build defines it).
let webrtcSdk;
try {
    webrtcSdk = JSON.parse(await readFile(require.resolve('amazon-kinesis-video-streams-webrtc/package.json'), 'utf8'));
} catch (e) {
    console.error(`the KVS WebRTC SDK is not installed: run \`npm ci\` in ${root} first (${e.message})`);
    process.exit(1);
}

await mkdir(out, { recursive: true });
await esbuild.build({
    entryPoints: [path.join(here, 'src', 'main.js')],
    bundle: true,
    platform: 'browser',
    format: 'iife',
    target: 'chrome110',
    minify: true,
    sourcemap: true,
    legalComments: 'external',
    outfile: path.join(out, 'console.js'),
    logLevel: 'warning',
    nodePaths: [path.join(root, 'node_modules')],
    // The SDK's SignalingClient extends Node's EventEmitter: a small browser one stands in.
    alias: { events: path.join(here, 'src', 'events.js') },
    define: { 'process.env.PACKAGE_VERSION': JSON.stringify(webrtcSdk.version) },
});
for (const name of ['index.html', 'console.css']) {
    await copyFile(path.join(here, 'src', name), path.join(out, name));
}
console.log(`openkvs web console built into ${out}`);
