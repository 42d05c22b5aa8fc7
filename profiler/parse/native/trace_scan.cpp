// One pass over a Chrome trace (Kineto's JSON) that keeps only what the profiler's
// attribution reads: operators (cat "cpu_op", ph "X"), user annotations (cat
// "user_annotation", ph "X"), allocator events (name "[memory]") and device activity
// (cat "kernel" / "gpu_memcpy" / "gpu_memset", ph "X"). Every other value is skipped
// without being decoded. It is a JSON reader, not a pattern match: key order and
// whitespace do not matter, and anything that is not valid JSON of the expected shape
// is an error (the caller then falls back to a full JSON load).
//
// Strings (names, string thread ids) are interned: each event holds a token id, and the
// token table gives the offset and length of the token's raw text in the input (without
// quotes) and whether it was a JSON string holding escapes. Numeric thread ids are
// tokens too (their text), so the caller converts each distinct value once. A missing
// thread id is token -1.
//
// C interface (ctypes): ts_scan -> handle; ts_error; ts_count; ts_fill_*; ts_free.

#include <charconv>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace {

struct Token {
    int64_t offset, length, kind;  // kind: 0 number text, 1 plain string, 2 string with escapes
};

struct Scan {
    const char* base = nullptr;
    const char* end = nullptr;
    int64_t error = 0;  // 0, or 1 + byte offset of the first problem
    std::unordered_map<std::string_view, int64_t> ids;
    std::vector<Token> tokens;
    // operators
    std::vector<int64_t> op_name, op_tid, op_ext, op_seq, op_fwd;
    std::vector<double> op_ts, op_dur;
    // annotations
    std::vector<int64_t> an_name, an_tid;
    std::vector<double> an_ts, an_dur;
    // allocator events
    std::vector<int64_t> m_tid, m_total, m_bytes, m_dev_id, m_dev_type, m_addr;
    std::vector<double> m_ts;
    // device activity
    std::vector<int64_t> k_ext;
    std::vector<double> k_dur;
};

struct Fail {};  // thrown on malformed input, caught in ts_scan

struct Table {
    bool v[256] = {};
    Table(const char* chars) {
        for (const char* c = chars; *c; ++c) v[static_cast<unsigned char>(*c)] = true;
    }
    bool operator[](unsigned char c) const { return v[c]; }
};
const Table kStringStop("\"\\");     // where a string's contents stop: quote, backslash
const Table kNumber("0123456789+-.eE");  // characters of a JSON number
const Table kStructure("\"{}[]");      // what matters while skipping a container

class Reader {
  public:
    Reader(Scan& s) : s_(s), p_(s.base), end_(s.end) {}

    void document() {
        ws();
        expect('{');
        bool events = false;
        if (!peek('}')) {
            do {
                std::string_view key = string_view_of_key();
                ws();
                expect(':');
                ws();
                if (key == "traceEvents") {
                    event_array();
                    events = true;
                } else {
                    skip_value();
                }
                ws();
            } while (take(','));
        }
        expect('}');
        if (!events) fail();
    }

    [[noreturn]] void fail() {
        s_.error = 1 + (p_ - s_.base);
        throw Fail{};
    }

  private:
    Scan& s_;
    const char* p_;
    const char* end_;

    void ws() {
        while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
    }
    bool peek(char c) {
        ws();
        return p_ < end_ && *p_ == c;
    }
    bool take(char c) {
        ws();
        if (p_ < end_ && *p_ == c) {
            ++p_;
            return true;
        }
        return false;
    }
    void expect(char c) {
        if (!take(c)) fail();
    }

    // A JSON string at p_ (after optional whitespace): its contents (without quotes) and
    // whether they hold an escape. Leaves p_ after the closing quote.
    std::string_view string(bool* escaped) {
        ws();
        if (p_ >= end_ || *p_ != '"') fail();
        const char* start = ++p_;
        bool esc = false;
        for (;;) {
            while (p_ < end_ && !kStringStop[static_cast<unsigned char>(*p_)]) ++p_;
            if (p_ >= end_) fail();
            if (*p_ == '"') break;
            esc = true;  // a backslash: the next character is escaped
            p_ += 2;
        }
        if (escaped != nullptr) *escaped = esc;
        return std::string_view(start, p_++ - start);
    }
    std::string_view string_view_of_key() { return string(nullptr); }

    // The text of a JSON number at p_ (validated by the numeric parsers below).
    std::string_view number_text() {
        ws();
        const char* start = p_;
        while (p_ < end_ && kNumber[static_cast<unsigned char>(*p_)]) ++p_;
        if (p_ == start) fail();
        return std::string_view(start, p_ - start);
    }
    double number() {
        std::string_view t = number_text();
        double v = 0;
        auto r = std::from_chars(t.data(), t.data() + t.size(), v);
        if (r.ec != std::errc() || r.ptr != t.data() + t.size()) fail();
        return v;
    }
    int64_t integer() {
        std::string_view t = number_text();
        int64_t v = 0;
        auto r = std::from_chars(t.data(), t.data() + t.size(), v);
        if (r.ec == std::errc() && r.ptr == t.data() + t.size()) return v;
        uint64_t u = 0;  // addresses above 2^63 keep their bits
        r = std::from_chars(t.data(), t.data() + t.size(), u);
        if (r.ec != std::errc() || r.ptr != t.data() + t.size()) fail();
        return static_cast<int64_t>(u);
    }

    int64_t intern(std::string_view text, int64_t kind) {
        auto it = s_.ids.find(text);
        if (it != s_.ids.end()) return it->second;
        int64_t id = static_cast<int64_t>(s_.tokens.size());
        s_.tokens.push_back({text.data() - s_.base, static_cast<int64_t>(text.size()), kind});
        s_.ids.emplace(text, id);
        return id;
    }
    int64_t string_token() {
        bool esc = false;
        std::string_view t = string(&esc);
        return intern(t, esc ? 2 : 1);
    }
    int64_t any_token() {  // a string or a number (thread ids are either)
        if (peek('"')) return string_token();
        std::string_view t = number_text();
        return intern(t, 0);
    }

    void skip_value() {
        ws();
        if (p_ >= end_) fail();
        char c = *p_;
        if (c == '"') {
            string(nullptr);
        } else if (c == '{' || c == '[') {
            skip_container();
        } else if (c == 't' || c == 'f' || c == 'n') {
            literal();
        } else {
            number_text();
        }
    }
    void literal() {
        for (const char* word : {"true", "false", "null"}) {
            size_t n = std::strlen(word);
            if (static_cast<size_t>(end_ - p_) >= n && std::memcmp(p_, word, n) == 0) {
                p_ += n;
                return;
            }
        }
        fail();
    }
    // An object or array, nested ones included; strings are skipped as strings so that
    // brackets inside them do not count.
    void skip_container() {
        int depth = 0;
        do {
            while (p_ < end_ && !kStructure[static_cast<unsigned char>(*p_)]) ++p_;
            if (p_ >= end_) fail();
            char c = *p_;
            if (c == '"') {
                string(nullptr);
                continue;
            }
            depth += (c == '{' || c == '[') ? 1 : -1;
            ++p_;
        } while (depth > 0);
    }

    void event_array() {
        expect('[');
        if (take(']')) return;
        do {
            event();
        } while (take(','));
        expect(']');
    }

    void event() {
        expect('{');
        std::string_view ph, cat, name;
        int64_t name_id = -1, tid = -1;  // token ids; -1: no such key
        bool has_ts = false;
        double ts = 0, dur = 0;
        int64_t ext = -1, seq = -1, fwd = -1;
        int64_t total = 0, bytes = 0, dev_id = -1, dev_type = 0, addr = 0;
        if (!peek('}')) {
            do {
                std::string_view key = string_view_of_key();
                expect(':');
                if (key == "ph") {
                    ph = string(nullptr);
                } else if (key == "cat") {
                    cat = string(nullptr);
                } else if (key == "name") {
                    bool esc = false;
                    name = string(&esc);
                    name_id = intern(name, esc ? 2 : 1);
                } else if (key == "tid") {
                    tid = any_token();
                } else if (key == "ts") {
                    ts = number();
                    has_ts = true;
                } else if (key == "dur") {
                    dur = number();
                } else if (key == "args" && peek('{')) {
                    expect('{');
                    if (!peek('}')) {
                        do {
                            std::string_view a = string_view_of_key();
                            expect(':');
                            ws();
                            bool numeric = p_ < end_ && *p_ != '"' && *p_ != '{' && *p_ != '['
                                           && *p_ != 't' && *p_ != 'f' && *p_ != 'n';
                            if (numeric && a == "External id") ext = integer();
                            else if (numeric && a == "Sequence number") seq = integer();
                            else if (numeric && a == "Fwd thread id") fwd = integer();
                            else if (numeric && a == "Total Allocated") total = integer();
                            else if (numeric && a == "Bytes") bytes = integer();
                            else if (numeric && a == "Device Id") dev_id = integer();
                            else if (numeric && a == "Device Type") dev_type = integer();
                            else if (numeric && a == "Addr") addr = integer();
                            else skip_value();
                        } while (take(','));
                    }
                    expect('}');
                } else {
                    skip_value();
                }
            } while (take(','));
        }
        expect('}');
        bool complete = ph == "X";
        if (name == "[memory]") {
            if (!has_ts) fail();
            s_.m_tid.push_back(tid);
            s_.m_ts.push_back(ts);
            s_.m_total.push_back(total);
            s_.m_bytes.push_back(bytes);
            s_.m_dev_id.push_back(dev_id);
            s_.m_dev_type.push_back(dev_type);
            s_.m_addr.push_back(addr);
        } else if (complete && cat == "cpu_op") {
            if (!has_ts || name_id < 0) fail();
            s_.op_name.push_back(name_id);
            s_.op_tid.push_back(tid);
            s_.op_ts.push_back(ts);
            s_.op_dur.push_back(dur);
            s_.op_ext.push_back(ext);
            s_.op_seq.push_back(seq);
            s_.op_fwd.push_back(fwd);
        } else if (complete && cat == "user_annotation") {
            if (!has_ts || name_id < 0) fail();
            s_.an_name.push_back(name_id);
            s_.an_tid.push_back(tid);
            s_.an_ts.push_back(ts);
            s_.an_dur.push_back(dur);
        } else if (complete && (cat == "kernel" || cat == "gpu_memcpy" || cat == "gpu_memset")) {
            s_.k_ext.push_back(ext);
            s_.k_dur.push_back(dur);
        }
    }
};

template <typename T>
void copy(const std::vector<T>& v, T* out) {
    if (!v.empty()) std::memcpy(out, v.data(), v.size() * sizeof(T));
}

}  // namespace

extern "C" {

void* ts_scan(const char* data, int64_t length) {
    Scan* s = new (std::nothrow) Scan;
    if (s == nullptr) return nullptr;
    s->base = data;
    s->end = data + length;
    try {
        Reader r(*s);
        r.document();
    } catch (const Fail&) {
        // error already set
    } catch (...) {
        if (s->error == 0) s->error = 1;  // out of memory
    }
    return s;
}

int64_t ts_error(void* h) { return static_cast<Scan*>(h)->error; }

// 0 operators, 1 annotations, 2 allocator events, 3 device activity, 4 tokens
int64_t ts_count(void* h, int64_t table) {
    Scan* s = static_cast<Scan*>(h);
    switch (table) {
        case 0: return static_cast<int64_t>(s->op_name.size());
        case 1: return static_cast<int64_t>(s->an_name.size());
        case 2: return static_cast<int64_t>(s->m_ts.size());
        case 3: return static_cast<int64_t>(s->k_ext.size());
        case 4: return static_cast<int64_t>(s->tokens.size());
        default: return -1;
    }
}

void ts_fill_ops(void* h, int64_t* name, int64_t* tid, double* ts, double* dur, int64_t* ext,
                 int64_t* seq, int64_t* fwd) {
    Scan* s = static_cast<Scan*>(h);
    copy(s->op_name, name);
    copy(s->op_tid, tid);
    copy(s->op_ts, ts);
    copy(s->op_dur, dur);
    copy(s->op_ext, ext);
    copy(s->op_seq, seq);
    copy(s->op_fwd, fwd);
}

void ts_fill_annotations(void* h, int64_t* name, int64_t* tid, double* ts, double* dur) {
    Scan* s = static_cast<Scan*>(h);
    copy(s->an_name, name);
    copy(s->an_tid, tid);
    copy(s->an_ts, ts);
    copy(s->an_dur, dur);
}

void ts_fill_memory(void* h, int64_t* tid, double* ts, int64_t* total, int64_t* bytes,
                    int64_t* dev_id, int64_t* dev_type, int64_t* addr) {
    Scan* s = static_cast<Scan*>(h);
    copy(s->m_tid, tid);
    copy(s->m_ts, ts);
    copy(s->m_total, total);
    copy(s->m_bytes, bytes);
    copy(s->m_dev_id, dev_id);
    copy(s->m_dev_type, dev_type);
    copy(s->m_addr, addr);
}

void ts_fill_device(void* h, int64_t* ext, double* dur) {
    Scan* s = static_cast<Scan*>(h);
    copy(s->k_ext, ext);
    copy(s->k_dur, dur);
}

// per token: offset, length, kind (0 number text, 1 string, 2 string with escapes)
void ts_fill_tokens(void* h, int64_t* out) {
    Scan* s = static_cast<Scan*>(h);
    for (size_t i = 0; i < s->tokens.size(); ++i) {
        out[3 * i] = s->tokens[i].offset;
        out[3 * i + 1] = s->tokens[i].length;
        out[3 * i + 2] = s->tokens[i].kind;
    }
}

void ts_free(void* h) { delete static_cast<Scan*>(h); }

}  // extern "C"
