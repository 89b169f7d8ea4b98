// argocd-health runs an Argo CD custom health check (a Lua script) against one Kubernetes object the
// way Argo CD does, with the interpreter Argo CD uses (github.com/yuin/gopher-lua), and prints the
// verdict as JSON: {"status": "Healthy", "message": "..."}.
//
// Usage: argocd-health [-open-libs] SCRIPT.lua [OBJECT.json]   (the object on stdin when omitted)
//
// It mirrors util/lua/lua.go of Argo CD (runLua, ExecuteHealthLua, decodeValue) at commit
// 37ee0097cf851bc2dd7665fc081bbce61a7e836e (2026-08-22):
//   - a script from argocd-cm runs without Lua's standard libraries (SkipOpenLibs) unless
//     resource.customizations.useOpenLibs.<group_kind> is "true"; then only package, base, table
//     and a "safe" os (time, date) are opened. So `string.*` is not available to our scripts.
//   - the object is the global table `obj`, converted by Argo CD's own decodeValue (numbers are
//     Lua numbers: the API server's JSON is decoded by apimachinery into int64 or float64);
//     `actionParams` is an empty table.
//   - the script has one second; its last return value must be a table (encoded with
//     layeh.com/gopher-json and decoded into {status, message}) or nil; an unknown status
//     becomes Unknown with "Lua returned an invalid health status".
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"time"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
)

// Set at build time by hack/build-binaries.sh (gopher-lua's version and a hash of these sources).
var version = "dev"

type healthStatus struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
}

var validStatus = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

func main() {
	openLibs := flag.Bool("open-libs", false, "open Lua's standard libraries, as resource.customizations.useOpenLibs does")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("argocd-health", version)
		return
	}
	if flag.NArg() < 1 || flag.NArg() > 2 {
		fmt.Fprintln(os.Stderr, "usage: argocd-health [-open-libs] SCRIPT.lua [OBJECT.json]")
		os.Exit(2)
	}
	script, err := os.ReadFile(flag.Arg(0))
	check(err)
	var raw []byte
	if flag.NArg() == 2 {
		raw, err = os.ReadFile(flag.Arg(1))
	} else {
		raw, err = io.ReadAll(os.Stdin)
	}
	check(err)
	obj, err := decodeObject(raw)
	check(err)
	hs, err := executeHealthLua(obj, string(script), *openLibs)
	check(err)
	out, err := json.Marshal(hs)
	check(err)
	fmt.Println(string(out))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "argocd-health:", err)
		os.Exit(1)
	}
}

// decodeObject reads JSON as apimachinery's unstructured decoding does: integers become int64,
// other numbers float64.
func decodeObject(raw []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, err
	}
	return convertNumbers(obj).(map[string]any), nil
}

func convertNumbers(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, item := range t {
			t[k] = convertNumbers(item)
		}
	case []any:
		for i, item := range t {
			t[i] = convertNumbers(item)
		}
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i
		}
		f, _ := t.Float64()
		return f
	}
	return v
}

// runLua is Argo CD's VM.runLuaWithResourceActionParameters without action parameters.
func runLua(obj map[string]any, script string, useOpenLibs bool) (*lua.LState, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !useOpenLibs})
	for _, pair := range []struct {
		n string
		f lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, OpenSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(pair.f), NRet: 0, Protect: true}, lua.LString(pair.n)); err != nil {
			panic(err)
		}
	}
	l.PreloadModule(lua.OsLibName, SafeOsLoader)

	ctx, cancel := context.WithTimeout(context.Background(), 1*time.Second)
	defer cancel()
	l.SetContext(ctx)

	l.SetGlobal("actionParams", l.CreateTable(0, 0))
	l.SetGlobal("obj", decodeValue(l, obj))

	fn, err := l.LoadString(script)
	if err == nil {
		l.Push(fn)
		err = l.PCall(0, lua.MultRet, nil)
	}
	var apiErr *lua.ApiError
	if errors.As(err, &apiErr) && apiErr.Type == lua.ApiErrorRun {
		apiErr.StackTrace = ""
		err = apiErr
	}
	return l, err
}

// executeHealthLua is Argo CD's VM.ExecuteHealthLua.
func executeHealthLua(obj map[string]any, script string, useOpenLibs bool) (*healthStatus, error) {
	l, err := runLua(obj, script, useOpenLibs)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	returnValue := l.Get(-1)
	switch returnValue.Type() {
	case lua.LTTable:
		jsonBytes, err := luajson.Encode(returnValue)
		if err != nil {
			return nil, err
		}
		hs := &healthStatus{}
		if err := json.Unmarshal(jsonBytes, hs); err != nil {
			typeError := &json.UnmarshalTypeError{Value: "array", Type: reflect.TypeFor[*healthStatus]()}
			if errors.As(err, &typeError) {
				return &healthStatus{}, nil
			}
			return nil, err
		}
		if !validStatus[hs.Status] {
			return &healthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
		}
		return hs, nil
	case lua.LTNil:
		return &healthStatus{}, nil
	}
	return nil, fmt.Errorf("expect %s output from Lua script, not %s", "table", returnValue.Type().String())
}

// decodeValue is Argo CD's decodeValue (itself taken from layeh.com/gopher-json, plus integer types).
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch converted := value.(type) {
	case bool:
		return lua.LBool(converted)
	case float64:
		return lua.LNumber(converted)
	case string:
		return lua.LString(converted)
	case json.Number:
		return lua.LString(converted)
	case int:
		return lua.LNumber(converted)
	case int32:
		return lua.LNumber(converted)
	case int64:
		return lua.LNumber(converted)
	case []any:
		arr := l.CreateTable(len(converted), 0)
		for _, item := range converted {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(converted))
		for key, item := range converted {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	case nil:
		return lua.LNil
	}
	return lua.LNil
}
