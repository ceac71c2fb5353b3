// Runs one model in onnxruntime-node and writes its outputs as raw little-endian files.
// Usage: node run_bundle.js spec.json
// spec: {"model": path, "level": "extended", "inputs": [{"name", "dtype", "dims", "file"}], "out_dir": path}
// Writes out_dir/outputs.json: [{"name", "dtype", "dims", "file"}], one raw file per output.
'use strict';

const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

const ARRAYS = {
  float32: Float32Array,
  float64: Float64Array,
  int64: BigInt64Array,
  int32: Int32Array,
  uint8: Uint8Array,
  int8: Int8Array,
  bool: Uint8Array,
};

function readTensor(spec) {
  const Array_ = ARRAYS[spec.dtype];
  if (!Array_) throw new Error(`input ${spec.name}: unsupported dtype ${spec.dtype}`);
  const raw = fs.readFileSync(spec.file);
  // Copy into a fresh, aligned buffer: Node may hand back a slice of a shared pool.
  const data = new Array_(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  return new ort.Tensor(spec.dtype, data, spec.dims);
}

async function main() {
  const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const session = await ort.InferenceSession.create(spec.model, {
    executionProviders: ['cpu'],
    graphOptimizationLevel: spec.level || 'extended',
    intraOpNumThreads: 1,
  });
  const feeds = {};
  for (const input of spec.inputs) feeds[input.name] = readTensor(input);
  const results = await session.run(feeds);
  const written = session.outputNames.map((name, i) => {
    const tensor = results[name];
    const file = path.join(spec.out_dir, `output_${i}.bin`);
    const data = tensor.data;
    fs.writeFileSync(file, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    return { name, dtype: tensor.type, dims: tensor.dims, file };
  });
  fs.writeFileSync(path.join(spec.out_dir, 'outputs.json'), JSON.stringify(written));
  if (typeof session.release === 'function') await session.release();
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
