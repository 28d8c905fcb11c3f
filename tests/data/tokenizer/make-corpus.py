#!/usr/bin/python3
"""Builds corpus.txt.gz, the tokenizer test corpus, from text found on a
Debian system (see README). The output depends on the packages installed, so
the corpus is committed; this script documents how it was made."""
import gettext, glob, gzip, importlib, inspect, io, os, pkgutil, sys, warnings

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus.txt.gz')
parts = []  # (name, bytes)


def add(name, text, limit):
    data = text.encode('utf-8') if isinstance(text, str) else text
    if len(data) > limit:
        data = data[:limit]
        data = data[:data.rfind(b'\n') + 1]
    parts.append((name, data))


# English legal prose.
lic = ''
for name in ['GPL-3', 'Apache-2.0', 'LGPL-2.1', 'MPL-2.0', 'Artistic', 'CC0-1.0', 'GFDL-1.3']:
    lic += open('/usr/share/common-licenses/' + name, encoding='utf-8').read()
add('common-licenses', lic, 150_000)

# Python standard library docstrings (code-like English, indentation, tabs).
warnings.simplefilter('ignore')
docs = []
names = sorted(m.name for m in pkgutil.iter_modules() if not m.name.startswith(('_', 'test', 'idlelib', 'tkinter', 'turtle', 'antigravity', 'this')))
for modname in names:
    path = getattr(importlib.util.find_spec(modname), 'origin', '') or ''
    if not path.startswith(sys.base_prefix) or 'dist-packages' in path:
        continue
    try:
        mod = importlib.import_module(modname)
    except Exception:
        continue
    if mod.__doc__:
        docs.append(mod.__doc__)
    for attr, obj in sorted(vars(mod).items()):
        if attr.startswith('_') or getattr(obj, '__module__', None) != modname:
            continue
        d = inspect.getdoc(obj)
        if d:
            docs.append(d)
add('python-docstrings', '\n'.join(docs), 300_000)

# Debian changelogs and copyright files: names of people from everywhere.
text = b''
for f in sorted(glob.glob('/usr/share/doc/*/changelog.Debian.gz')):
    text += gzip.open(f).read()[:1500]
add('debian-changelogs', text, 120_000)
text = b''
for f in sorted(glob.glob('/usr/share/doc/*/copyright')):
    text += open(f, 'rb').read()[:800]
add('debian-copyright', text, 100_000)

# Translated messages (gettext catalogs) in many scripts.
langs = ['zh_CN', 'zh_TW', 'ja', 'ko', 'ru', 'uk', 'el', 'de', 'fr', 'es', 'pt_BR', 'it', 'pl', 'cs',
         'vi', 'tr', 'ar', 'he', 'hi', 'th', 'ka', 'fa', 'sr', 'bn', 'ta', 'hu', 'fi', 'sv', 'ro']
for lang in langs:
    msgs = []
    for f in sorted(glob.glob('/usr/share/locale/%s/LC_MESSAGES/*.mo' % lang)):
        try:
            cat = gettext.GNUTranslations(open(f, 'rb'))._catalog
        except Exception:
            continue
        for k in sorted(cat, key=str):
            v = cat[k]
            if k and isinstance(v, str) and len(v) > 3:
                msgs.append(v)
    add('locale-' + lang, '\n'.join(msgs) + '\n', 21_000)

# X11 compose table: one line per composed character (symbols, accents).
add('x11-compose', open('/usr/share/X11/locale/en_US.UTF-8/Compose', 'rb').read(), 60_000)

# Hand-written lines for what the sources above lack.
special = [
    'Crème brûlée, naïve façade, Ærøskøbing, Łódź, Ångström, Žluťoučký kůň úpěl ďábelské ódy.',
    'Decomposed: e\u0301 a\u0308 n\u0303 o\u0302 A\u030a c\u0327; stacked: Z\u0351\u036b\u0343a\u0308\u0300l\u0316g\u035eo\u0489.',
    'Tiếng Việt có dấu; Ελληνικά: Καλημέρα κόσμε; Русский: Съешь же ещё этих мягких французских булок.',
    'Chinese: 我能吞下玻璃而不伤身体。 繁體中文：我能吞下玻璃而不傷身體。',
    'Japanese: 私はガラスを食べられます。それは私を傷つけません。ひらがな カタカナ 漢字',
    'Korean: 나는 유리를 먹을 수 있어요. 그래도 아프지 않아요. Jamo: \u1100\u1161\u11a8 \u1112\u1161\u11ab',
    'CJK compatibility: 豈 更 車 ㈱ ㍻ ㌔ ㎏ ㎞ ㏄ ⺟ ⼀ ㊙ ㊗',
    'ＦＵＬＬＷＩＤＴＨ　ｔｅｘｔ　ＡＢＣ　１２３！？＠＃＄％＆（）［］｛｝',
    'ﾊﾝｶｸ ｶﾀｶﾅ ﾃﾞｽ ｶﾞｷﾞｸﾞ ﾊﾟﾋﾟﾌﾟ ｰ ｡｢｣､･ ﾡﾢﾣ',
    'Ligatures: ﬁnd ﬂow oﬀer eﬃcient baﬄe ﬅ ﬆ Ĳssel ǅ ǈ ǋ ℡ ™ № ℃ ℉ Å K',
    'Emoji: 😀 😂 🤖 🇯🇵 🇫🇷 👨\u200d👩\u200d👧\u200d👦 👍🏽 ❤\ufe0f 1\ufe0f\u20e3 🧑\u200d💻 🏳\ufe0f\u200d🌈',
    'Digits: 3.14159 2024-01-01 1,000,000 0x7FFF 1e-9 ١٢٣٤ ०१२३ ①②③ ⑴⑵ ⒈⒉ ⅫⅣⅸ ² ³ ½ ¾ ⅓ ₂ ⁿ',
    'Math: 𝐇𝐞𝐥𝐥𝐨 𝕏 ℍ ℝ 𝒜 ∑ ∫ ≠ ≤ ∞ √2 α→β',
    'Arabic: مرحبا بالعالم ﻻ ﷺ ﷽ ﻿Hebrew: שָׁלוֹם Devanagari: नमस्ते Thai: สวัสดีครับ',
    'Armenian: Բարեւ Georgian: გამარჯობა Ethiopic: ሰላም Tibetan: བཀྲ་ཤིས་ Khmer: សួស្តី',
    'col1\tcol2\t\tcol4\t',
    '\tleading tab and trailing spaces   ',
    'a  b   c    d     e      f',
    '      ',
    '\t',
    '',
    '   leading spaces',
    'nbsp:\u00a0thin:\u2009em:\u2003ideographic:\u3000zwsp:\u200bzwj:\u200dbom:\ufeffshy:\u00adend',
    'line\u2028separator and paragraph\u2029separator',
    'User symbols: [SEP] a[SEP]b [SEP][SEP] [CLS]x[CLS] [sep] [ SEP ] [SE',
    'Markup: a<br>b <br/> <br/ <b>bold</b> pldr-llm pldr pldr- a b ab 😀😀😀 １２３',
    'Control-like: [START] [END] [PAD] [UNK] <s> </s> <unk> <0x41> <pad>',
    'Meta symbol: ▁ ▁▁ a▁b ▁leading trailing▁',
    '▁',
    'Replacement char: \ufffd and \ufffd\ufffd',
    'a' * 3000,
    '1234567890' * 300,
    '😀' * 500,
    'ｱｲｳｴｵ' * 200,
    'longword' * 400,
]
text = b'\n'.join(s.encode('utf-8') for s in special) + b'\n'
invalid = [
    b'lone continuation \x80 and \xbf here',
    b'truncated \xe2\x82 euro and \xf0\x9f\x98 emoji',
    b'overlong \xc0\xaf \xe0\x80\xaf \xc1\xbf',
    b'surrogates \xed\xa0\x80\xed\xb0\x80 end',
    b'beyond U+10FFFF \xf4\x90\x80\x80 and \xf5\xff\xfe\xfd',
    b'Latin-1 caf\xe9 na\xefve \xa0nbsp',
    b'five byte \xf8\x88\x80\x80\x80 six \xfc\x84\x80\x80\x80\x80',
    b'\xff\xff\xff',
    b'\xc3',
    b'mixed \xc3\xa9\xc3 \xe6\x97\xa5\xe6\x9c \xe6\x9c\xac',
    b'carriage return\r',
    b'nul\x00byte',
    b'escape \x1b[31mred\x1b[0m bell\x07 del\x7f',
]
text += b'\n'.join(invalid) + b'\n'
parts.append(('special', text))

# Concatenate, every part ending with a newline.
corpus = b''
for name, data in parts:
    corpus += data
    if not corpus.endswith(b'\n'):
        corpus += b'\n'
with gzip.GzipFile(OUT, 'wb', compresslevel=9, mtime=0) as f:
    f.write(corpus)
for name, data in parts:
    print('%-20s %8d bytes %6d lines' % (name, len(data), data.count(b'\n')))
print('total %d bytes, %d lines, %d compressed' % (len(corpus), corpus.count(b'\n'), os.path.getsize(OUT)))
