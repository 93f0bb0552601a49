"""Would a transposed decode-state layout make the ONNX step's small kernels cheaper? (issue 15)

    python benchmarks/state_layout_cpu.py

Two synthetic ONNX graphs of 24 Mamba layers' conv window + selective-state update at the 130m
width (d_inner 1536, d_state 16, d_conv 4), the kernels edgeseq's step graph uses for them:
``current`` keeps the states as the model does (SSM ``[B, Di, N]``, conv ``[B, Di, k-1]``; the two
per-channel broadcasts as inner-size-1 matrix products, the window's shift as a product with the
identity's last rows), ``transposed`` holds them as ``[B, N, Di]`` / ``[B, k-1, Di]`` so every
broadcast, the window concat and its shift run on contiguous 1536-float spans. Each graph runs in
ONNX Runtime at 1 and 2 threads; the two are called alternately 600 times (paired, so the
machine's drift cancels) and the median of the per-pair ratios printed.

Measured on the 2-core AMD EPYC VM (AVX-512 VNNI), 2026-12-02 ~05:47 UTC, load ~0.6: 0.90x at one
thread, 0.95x at two, of ~2.3 ms (a second run: 0.91x / 0.89x of ~2.3 / 1.9 ms) — 1-2.5% of a 130m step, not worth changing the artifact's state
contract; the small-op cost is ONNX Runtime's per-kernel cost, not the layout.
"""
import time, os, numpy as np, onnxruntime as ort
from onnx import helper as h, TensorProto as T, numpy_helper as nh
Di, N, K = 1536, 16, 4
def const(name, arr): return nh.from_array(np.asarray(arr), name)
def graph(transposed, reps=24):
    nodes, inits, outs = [], [], []
    f = lambda n, s: h.make_tensor_value_info(n, T.FLOAT, s)
    ins = [f('x', [1, Di]), f('dt', [1, Di]), f('B', [1, N]), f('C', [1, N]), f('za', [1, Di])]
    inits += [const('ax1', np.array([1], np.int64)), const('axm1', np.array([-1], np.int64)),
              const('ones', np.ones((1, N), np.float32)), const('D', np.random.rand(Di).astype(np.float32)),
              const('bias', np.random.rand(Di).astype(np.float32))]
    if transposed:
        inits += [const('AT', -np.random.rand(N, Di).astype(np.float32)), const('wT', np.random.rand(K, Di).astype(np.float32)),
                  const('s0', np.array([1], np.int64)), const('s1', np.array([K], np.int64))]
    else:
        inits += [const('A', -np.random.rand(Di, N).astype(np.float32)), const('w', np.random.rand(Di, K).astype(np.float32)),
                  const('S', np.eye(K, dtype=np.float32)[:, 1:].copy())]
    for r in range(reps):
        p = lambda n: f'{n}_{r}'
        hs = [1, N, Di] if transposed else [1, Di, N]
        cs = [1, K - 1, Di] if transposed else [1, Di, K - 1]
        ins += [f(p('h'), hs), f(p('conv'), cs)]
        if transposed:
            nodes += [h.make_node('Unsqueeze', ['x', 'ax1'], [p('xu')]), h.make_node('Concat', [p('conv'), p('xu')], [p('win')], axis=1),
                      h.make_node('Mul', [p('win'), 'wT'], [p('cw')]), h.make_node('ReduceSum', [p('cw'), 'ax1'], [p('cs')], keepdims=0),
                      h.make_node('Add', [p('cs'), 'bias'], [p('cv')]), h.make_node('Slice', [p('win'), 's0', 's1', 'ax1'], [p('nconv')]),
                      h.make_node('Unsqueeze', ['dt', 'ax1'], [p('dtu')]), h.make_node('Mul', [p('dtu'), 'AT'], [p('dA')]),
                      h.make_node('Exp', [p('dA')], [p('e')]), h.make_node('Mul', [p('e'), p('h')], [p('h1')]),
                      h.make_node('Mul', ['dt', 'x'], [p('dx')]), h.make_node('Unsqueeze', [p('dx'), 'ax1'], [p('dxu')]),
                      h.make_node('Unsqueeze', ['B', 'axm1'], [p('Bu')]), h.make_node('Mul', [p('Bu'), p('dxu')], [p('drv')]),
                      h.make_node('Add', [p('h1'), p('drv')], [p('nh')]), h.make_node('Unsqueeze', ['C', 'ax1'], [p('Cu')]),
                      h.make_node('MatMul', [p('Cu'), p('nh')], [p('y')]), h.make_node('Squeeze', [p('y'), 'ax1'], [p('ys')])]
        else:
            nodes += [h.make_node('Unsqueeze', ['x', 'axm1'], [p('xu')]), h.make_node('Concat', [p('conv'), p('xu')], [p('win')], axis=-1),
                      h.make_node('Mul', [p('win'), 'w'], [p('cw')]), h.make_node('ReduceSum', [p('cw'), 'axm1'], [p('cs')], keepdims=0),
                      h.make_node('Add', [p('cs'), 'bias'], [p('cv')]), h.make_node('MatMul', [p('win'), 'S'], [p('nconv')]),
                      h.make_node('Unsqueeze', ['dt', 'axm1'], [p('dtu')]), h.make_node('MatMul', [p('dtu'), 'ones'], [p('dtr')]),
                      h.make_node('Mul', [p('dtr'), 'A'], [p('dA')]),
                      h.make_node('Exp', [p('dA')], [p('e')]), h.make_node('Mul', [p('e'), p('h')], [p('h1')]),
                      h.make_node('Mul', ['dt', 'x'], [p('dx')]), h.make_node('Unsqueeze', [p('dx'), 'axm1'], [p('dxu')]),
                      h.make_node('Unsqueeze', ['B', 'ax1'], [p('Bu')]), h.make_node('MatMul', [p('dxu'), p('Bu')], [p('drv')]),
                      h.make_node('Add', [p('h1'), p('drv')], [p('nh')]), h.make_node('Unsqueeze', ['C', 'axm1'], [p('Cu')]),
                      h.make_node('MatMul', [p('nh'), p('Cu')], [p('y')]), h.make_node('Squeeze', [p('y'), 'axm1'], [p('ys')])]
        nodes += [h.make_node('Mul', ['D', 'x'], [p('Dx')]), h.make_node('Add', [p('ys'), p('Dx')], [p('y2')]),
                  h.make_node('Mul', [p('y2'), 'za'], [p('out')])]
        outs += [f(p('out'), None), f(p('nh'), None), f(p('nconv'), None), f(p('cv'), None)]
    g = h.make_graph(nodes, 'g', ins, outs, inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid('', 21)]); m.ir_version = 10
    return m.SerializeToString()
def sess(mb, th):
    o = ort.SessionOptions(); o.intra_op_num_threads = th; o.log_severity_level = 3
    s = ort.InferenceSession(mb, o)
    feeds = {i.name: np.random.rand(*[d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32) * 0.1 for i in s.get_inputs()}
    return s, feeds
S = {(k, th): sess(graph(k == 'transposed'), th) for k in ('current', 'transposed') for th in (1, 2)}
for th in (1, 2):
    (a, fa), (b, fb) = S[('current', th)], S[('transposed', th)]
    for _ in range(10): a.run(None, fa); b.run(None, fb)
    ta, tb = [], []
    for _ in range(600):
        t0 = time.perf_counter(); a.run(None, fa); t1 = time.perf_counter(); b.run(None, fb); t2 = time.perf_counter()
        ta.append(t1 - t0); tb.append(t2 - t1)
    ta, tb = np.array(ta) * 1e3, np.array(tb) * 1e3
    print(f"{th}t paired x600: current {np.median(ta):.3f} ms  transposed {np.median(tb):.3f} ms  median ratio of pairs {np.median(tb / ta):.2f}")
print('load', os.getloadavg())
